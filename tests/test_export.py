"""ONNX policy step: parity with torch over a long rollout, the mode export, sidecar checks."""

import json
import shutil

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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    env = envs.make("fake/vector", seed=0)
    agent = make_agent(env)
    export(agent, env, tmp / "p.onnx")
    return tmp


def edited_sidecar(exported, tmp_path, edit):
    shutil.copy(exported / "p.onnx", tmp_path / "p.onnx")
    meta = json.loads((exported / "p.onnx.json").read_text())
    edit(meta)
    (tmp_path / "p.onnx.json").write_text(json.dumps(meta))
    return tmp_path / "p.onnx"


def test_sidecar_hash_mismatch_refused(exported, tmp_path):
    path = edited_sidecar(exported, tmp_path, lambda m: m.update(sha256="0" * 64))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        PolicyRuntime(path)


def test_sidecar_shape_dtype_and_missing_key_refused(exported, tmp_path):
    def shape(m):
        m["inputs"][0]["shape"] = [1, 99]

    def dtype(m):
        m["inputs"][0]["dtype"] = "uint8"

    def missing(m):
        m["inputs"] = m["inputs"][1:]

    for edit, message in ((shape, "shape"), (dtype, "dtype"), (missing, "sidecar lacks inputs")):
        with pytest.raises(ValueError, match=message):
            PolicyRuntime(edited_sidecar(exported, tmp_path, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("outputs"), "'outputs' is missing"),
        (lambda m: m.update(obs_keys="x"), "'obs_keys' is missing or not a list"),
        (lambda m: m.update(action={"dim": 2}), "'action' needs"),
        (lambda m: m.update(noise={}), "'noise' needs"),
        (lambda m: m["inputs"][0].update(shape=[1, -3]), "bad shape or dtype"),
        (lambda m: m.update(outputs=m["outputs"][:1]), "sidecar lacks outputs"),
    ],
)
def test_malformed_sidecar_refused_naming_the_field(exported, tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        PolicyRuntime(edited_sidecar(exported, tmp_path, edit))


def test_sidecar_that_is_not_an_object_refused(exported, tmp_path):
    shutil.copy(exported / "p.onnx", tmp_path / "p.onnx")
    (tmp_path / "p.onnx.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        PolicyRuntime(tmp_path / "p.onnx")


def test_corrupted_model_and_missing_sidecar_refused(exported, tmp_path):
    shutil.copy(exported / "p.onnx.json", tmp_path / "p.onnx.json")
    (tmp_path / "p.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="sha256"):
        PolicyRuntime(tmp_path / "p.onnx")
    (tmp_path / "q.onnx").write_bytes((exported / "p.onnx").read_bytes())
    with pytest.raises(ValueError, match="sidecar .* is missing"):
        PolicyRuntime(tmp_path / "q.onnx")


def test_runtime_rejects_bad_observations(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    with pytest.raises(ValueError, match="missing"):
        runtime.step({})
    obs = {k: np.zeros(s["shape"][1:], np.float32) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])}
    bad = dict(obs)
    bad[runtime.obs_keys[0]] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="shape"):
        runtime.step(bad)
    assert np.all(np.isfinite(runtime.step(obs)))
    carry = runtime.carry()
    bad[runtime.obs_keys[0]] = np.full_like(obs[runtime.obs_keys[0]], np.nan)
    with pytest.raises(ValueError, match="non-finite"):
        runtime.step(bad)
    for name, value in runtime.carry().items():  # a refused step leaves the carry as it was
        np.testing.assert_array_equal(value, carry[name])
    bad[runtime.obs_keys[0]] = obs[runtime.obs_keys[0]].astype(np.complex64)
    with pytest.raises(ValueError, match="dtype complex64"):
        runtime.step(bad)
    with pytest.raises(ValueError, match="sent action"):
        runtime.action_sent(np.zeros(runtime.meta["action"]["dim"] + 1, np.float32))


def test_image_inputs_must_be_uint8():
    """A float image in [0, 1] cast to uint8 would be all zeros: refused instead."""
    from reverie.envs.base import dtype_fits

    assert dtype_fits(np.dtype(np.uint8), np.dtype(np.uint8))
    assert not dtype_fits(np.dtype(np.float32), np.dtype(np.uint8))
    assert not dtype_fits(np.dtype(np.int64), np.dtype(np.uint8))
    assert dtype_fits(np.dtype(np.float64), np.dtype(np.float32)) and dtype_fits(np.dtype(np.int32), np.dtype(np.float32))
    assert dtype_fits(np.dtype(np.int64), np.dtype(np.bool_)) and not dtype_fits(np.dtype(np.float32), np.dtype(np.bool_))


def test_runtime_checks_the_spaces_of_a_source(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    vector = envs.make("fake/vector", seed=0)
    runtime.check_spaces(vector.obs_space, vector.act_space)  # the env it was exported for
    with pytest.raises(ValueError, match="does not provide"):
        runtime.check_spaces(envs.make("fake/pixels", seed=0).obs_space, vector.act_space)
    with pytest.raises(ValueError, match="discrete"):
        runtime.check_spaces(vector.obs_space, envs.make("fake/discrete", seed=0).act_space)


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


def test_runtime_takes_the_sent_action_as_previous_action(exported):
    runtime = PolicyRuntime(exported / "p.onnx")
    obs = {k: np.zeros(s["shape"][1:], np.float32) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])}
    runtime.step(obs)
    runtime.action_sent(np.full(3, 0.25, np.float32))
    assert np.allclose(runtime.carry()["prev_action"], 0.25)


def test_hot_swapped_runtime_continues_the_carry(exported):
    env = envs.make("fake/vector", seed=0)
    old, new, straight = (PolicyRuntime(exported / "p.onnx") for _ in range(3))
    rng = np.random.default_rng(0)
    obs = env.reset(seed=0)
    for step in range(20):
        noise = rng.random(old.noise_dim, dtype=np.float32)
        if step == 10:
            new.load_carry(old)  # swap between two ticks
        runtime = old if step < 10 else new
        action = runtime.step(obs, noise)
        assert np.allclose(action, straight.step(obs, noise), atol=1e-6)
        obs = env.step(action)


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
