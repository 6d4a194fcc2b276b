"""ONNX policy step: parity with torch over a long rollout, the mode export, sidecar checks."""

import json

import numpy as np
import pytest
import torch
from conftest import make_agent

from reverie import envs
from reverie.cli.main import main
from reverie.realtime.export import export_policy
from reverie.realtime.policy_step import PolicyStep
from reverie.realtime.runtime import PolicyRuntime


def export(agent, env, path, deterministic=False):
    return export_policy(
        agent,
        path,
        obs_space=env.obs_space,
        deterministic=deterministic,
    )


def rollout_parity(env, agent, path, steps, seed=0):
    """Runs torch and onnxruntime side by side, each with its own carry, on the same noise.

    Returns the action differences of the steps whose latent samples agreed, and per step whether they agreed.
    """
    runtime = PolicyRuntime(path)
    step = PolicyStep(agent)
    rng = np.random.default_rng(seed)
    rssm = agent.wm.rssm
    deter, stoch = torch.zeros(1, rssm.deter), torch.zeros(1, *rssm.stoch_shape)
    prev = torch.zeros(1, agent.act_dim)
    obs = env.reset(seed=seed)
    runtime.reset()
    action_diff, same_latents = [], []
    for _ in range(steps):
        noise = rng.random(runtime.noise_dim, dtype=np.float32)
        inputs = [torch.as_tensor(np.ascontiguousarray(obs[k]))[None] for k in agent.wm.obs_keys]
        with torch.no_grad():
            act_t, deter, stoch = step(*inputs, deter, stoch, prev, torch.tensor([bool(obs["is_first"])]), torch.as_tensor(noise)[None])
        prev = act_t
        act_o = runtime.step(obs, noise)
        if rssm.categorical:
            same_latents.append(np.array_equal(runtime.inputs["stoch"].argmax(-1), stoch.argmax(-1).numpy()))
        else:  # a Gaussian z (V1): the same sample within float tolerance
            same_latents.append(np.abs(runtime.inputs["stoch"] - stoch.numpy()).max() <= 1e-4)
        if same_latents[-1]:
            action_diff.append(np.abs(act_o - act_t[0].numpy()).max())
        else:
            # A sample that fell the other way at a near-tie (float rounding): counted in same_latents; torch
            # continues from onnxruntime's carry so one flip is not compared as a thousand different steps.
            deter, stoch = torch.from_numpy(runtime.inputs["deter"].copy()), torch.from_numpy(runtime.inputs["stoch"].copy())
            act_t = prev = torch.from_numpy(act_o.copy())[None]
        obs = env.step(act_t[0].numpy())
        if obs["is_last"]:
            obs = env.reset()
    return np.array(action_diff), np.array(same_latents)


def test_parity_1000_steps_dmc_vector(tmp_path):
    env = envs.make("dmc/cartpole_swingup", seed=0)
    agent = make_agent(env)
    export(agent, env, tmp_path / "p.onnx")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 1000)
    assert diff.max() <= 1e-4, diff.max()
    assert same.mean() >= 0.999, same.mean()


def test_parity_pixels(tmp_path):
    env = envs.make("fake/pixels", seed=0)
    agent = make_agent(env, ("size=1m", "obs=pixels"))
    export(agent, env, tmp_path / "p.onnx")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 100)
    assert diff.max() <= 1e-4 and same.mean() >= 0.99


def test_parity_discrete(tmp_path):
    env = envs.make("fake/discrete", seed=0)
    agent = make_agent(env)
    export(agent, env, tmp_path / "p.onnx")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 200)
    assert diff.max() <= 1e-4 and same.mean() >= 0.99


@pytest.mark.parametrize(
    "algo, env_name, steps",
    [("dreamerv1", "dmc/cartpole_swingup", 1000), ("dreamerv2", "dmc/cartpole_swingup", 1000), ("dreamerv2", "fake/discrete", 200)],
)
def test_parity_dreamerv1_v2(algo, env_name, steps, tmp_path):
    """The V1 (Gaussian z, tanh-normal actor, exploration noise) and V2 (truncated-normal actor) steps export too."""
    env = envs.make(env_name, seed=0)
    agent = make_agent(env, (f"algo={algo}",))
    export(agent, env, tmp_path / "p.onnx")
    sidecar = json.loads((tmp_path / "p.onnx.json").read_text())
    assert sidecar["carry"]["latent"] == ("gaussian" if algo == "dreamerv1" else "categorical")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", steps)
    assert diff.max() <= 1e-4, diff.max()
    assert same.mean() >= 0.999, same.mean()


def test_deterministic_export_returns_the_mode(tmp_path):
    env = envs.make("dmc/cartpole_swingup", seed=0)
    agent = make_agent(env)
    export(agent, env, tmp_path / "m.onnx", deterministic=True)
    runtime = PolicyRuntime(tmp_path / "m.onnx")
    obs = env.reset(seed=1)
    state = agent.init_state(1)
    for _ in range(50):
        want, state = agent.policy({k: v[None] for k, v in obs.items()}, state, mode=True)
        got = runtime.step(obs)  # the noise is ignored by the mode export
        assert np.allclose(got, want[0].numpy(), atol=1e-5)
        obs = env.step(got)


def test_cli_export_from_a_training_run(tiny_overrides, tmp_path):
    assert main(["train", "env=fake/vector", "env.time_limit=10", "steps=40", *tiny_overrides]) == 0
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "policy.onnx")]) == 0
    meta = json.loads((tmp_path / "policy.onnx.json").read_text())
    assert meta["algo"] == "dreamerv3" and meta["env"] == "fake/vector"
    runtime = PolicyRuntime(tmp_path / "policy.onnx")
    assert runtime.step({k: np.zeros(3, np.float32) if k != "progress" else np.zeros(1, np.float32) for k in runtime.obs_keys}).shape == (
        3,
    )
    assert main(["export", str(tmp_path / "nowhere")]) == 2


def test_export_of_a_compiled_agent_traces_the_plain_modules(tmp_path):
    # The tracer cannot go through torch.compile; export must use the eager modules and leave the agent compiled.
    env = envs.make("fake/vector")
    agent = make_agent(env)
    agent.compile()
    compiled_forward = agent.critic.mlp.__dict__["forward"]
    export_policy(agent, tmp_path / "p.onnx", obs_space=env.obs_space)
    assert PolicyRuntime(tmp_path / "p.onnx").step(
        {k: np.zeros(env.obs_space[k].shape, np.float32) for k in ("target", "prev_action", "progress")}
    ).shape == (3,)
    assert agent.critic.mlp.__dict__["forward"] is compiled_forward and "core" in agent.wm.rssm.__dict__


def test_committed_robot_models_match_the_exporter(tmp_path):
    """The robot-side tests load committed models (tests/robot_models/): they must still be what the exporter writes.

    On failure, run `.venv/bin/python tests/make_robot_models.py` and commit the result.
    """
    from make_robot_models import FOLDER, export_all

    fresh = export_all(tmp_path)
    volatile = ("sha256", "torch", "onnxruntime_tested")
    for name, sidecar in fresh.items():
        committed = json.loads((FOLDER / f"{name}.onnx.json").read_text())
        assert {k: v for k, v in committed.items() if k not in volatile} == {k: v for k, v in sidecar.items() if k not in volatile}, name
        old, new = PolicyRuntime(FOLDER / f"{name}.onnx"), PolicyRuntime(tmp_path / f"{name}.onnx")
        rng = np.random.default_rng(0)
        for _ in range(20):
            obs = {k: rng.integers(0, 255, s["shape"][1:]).astype(s["dtype"]) for k, s in zip(old.obs_keys, old.meta["inputs"])}
            noise = rng.random(old.noise_dim, dtype=np.float32)
            np.testing.assert_allclose(old.step(obs, noise), new.step(obs, noise), atol=1e-6, err_msg=name)
