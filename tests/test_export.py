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


def export(agent, env, path, deterministic=False, split=True):
    return export_policy(agent, path, obs_space=env.obs_space, deterministic=deterministic, split=split)


def rollout_parity(env, agent, path, steps, seed=0, fused=None):
    """Runs torch and onnxruntime side by side, each with its own carry, on the same noise.

    With ``fused`` (the fused export of the same agent), that runs beside the
    two-part model at ``path`` too, and the two must agree within 1e-6 in the
    action and the whole carry at every step.

    Returns the action differences of the steps whose latent samples agreed, and per step whether they agreed.
    """
    runtime = PolicyRuntime(path)
    other = PolicyRuntime(fused) if fused else None
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
        carry = runtime.carry()
        if other is not None:
            np.testing.assert_allclose(other.step(obs, noise), act_o, atol=1e-6, rtol=0)
            for name, value in other.carry().items():
                np.testing.assert_allclose(value, carry[name], atol=1e-6, rtol=0, err_msg=name)
        runtime.advance()  # as the control loop does, between two ticks
        if rssm.categorical:
            same_latents.append(np.array_equal(carry["stoch"].argmax(-1), stoch.argmax(-1).numpy()))
        else:  # a Gaussian z (V1): the same sample within float tolerance
            same_latents.append(np.abs(carry["stoch"] - stoch.numpy()).max() <= 1e-4)
        if same_latents[-1]:
            action_diff.append(np.abs(act_o - act_t[0].numpy()).max())
        else:
            # A sample that fell the other way at a near-tie (float rounding): counted in same_latents; torch
            # continues from onnxruntime's carry so one flip is not compared as a thousand different steps.
            deter, stoch = torch.from_numpy(carry["deter"]), torch.from_numpy(carry["stoch"])
            act_t = prev = torch.from_numpy(act_o.copy())[None]
        obs = env.step(act_t[0].numpy())
        if obs["is_last"]:
            obs = env.reset()
    return np.array(action_diff), np.array(same_latents)


@pytest.mark.parametrize("obs", ["vector", "pixels"])
@pytest.mark.parametrize("algo", ["dreamerv1", "dreamerv2", "dreamerv3"])
def test_two_part_fused_and_torch_agree_over_1000_steps(algo, obs, tmp_path):
    """dmc/cartpole_swingup, 1,000 steps on the same noise: the two-part and fused exports agree within 1e-6
    (actions and carry, every step), and both with torch (actions within 1e-4, the same latent samples)."""
    env = envs.make("dmc/cartpole_swingup", obs=obs, seed=0)
    agent = make_agent(env, (f"algo={algo}", f"obs={obs}", *(("size=1m",) if algo == "dreamerv3" else ())))
    sidecar = export(agent, env, tmp_path / "p.onnx")
    export(agent, env, tmp_path / "f.onnx", split=False)
    assert sidecar["format"] == "reverie.policy_step/2"
    assert sidecar["carry"]["latent"] == ("gaussian" if algo == "dreamerv1" else "categorical")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 1000, fused=tmp_path / "f.onnx")
    assert diff.max() <= 1e-4, diff.max()
    assert same.mean() >= 0.999, same.mean()


def test_parity_discrete(tmp_path):
    env = envs.make("fake/discrete", seed=0)
    agent = make_agent(env)
    export(agent, env, tmp_path / "p.onnx")
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 200)
    assert diff.max() <= 1e-4 and same.mean() >= 0.99


def test_parity_dreamerv2_discrete(tmp_path):
    """V2 with a discrete action space, both formats."""
    env = envs.make("fake/discrete", seed=0)
    agent = make_agent(env, ("algo=dreamerv2",))
    export(agent, env, tmp_path / "p.onnx")
    export(agent, env, tmp_path / "f.onnx", split=False)
    diff, same = rollout_parity(env, agent, tmp_path / "p.onnx", 200, fused=tmp_path / "f.onnx")
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
    # `reverie eval` rebuilds the run's environment from these (here: its 10-step time limit).
    assert meta["env_config"]["time_limit"] == 10
    assert json.loads((tmp_path / "run" / "policy.onnx.json").read_text())["env_config"]["time_limit"] == 10
    runtime = PolicyRuntime(tmp_path / "policy.onnx")
    assert runtime.step({k: np.zeros(3, np.float32) if k != "progress" else np.zeros(1, np.float32) for k in runtime.obs_keys}).shape == (
        3,
    )
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "fused.onnx"), "--fused"]) == 0
    assert json.loads((tmp_path / "fused.onnx.json").read_text())["format"] == "reverie.policy_step/1"


def test_quantized_export_reports_its_deviation_and_is_refused_beyond_the_bound(tiny_overrides, tmp_path, capsys):
    """`reverie export --quantize int8`: the report (mean |Δaction| over the rollout, returns of each) is printed and kept
    in the sidecar; a bound it exceeds refuses the export and writes nothing."""
    assert main(["train", "env=fake/vector", "env.time_limit=10", "steps=40", *tiny_overrides]) == 0
    common = ["export", str(tmp_path / "run"), "--quantize", "int8", "--deviation-steps", "100", "--eval-episodes", "3"]
    capsys.readouterr()
    assert main([*common, "-o", str(tmp_path / "q.onnx"), "--max-deviation", "1.0"]) == 0
    assert "int8: mean |Δaction|" in capsys.readouterr().out
    meta = json.loads((tmp_path / "q.onnx.json").read_text())
    quant, report = meta["quantize"], meta["quantize"]["report"]
    assert quant["mode"] == "int8" and quant["bound"] == 1.0 and report["steps"] == 100
    assert 0 < report["mean_abs_action"] <= report["max_abs_action"] <= 2.0
    assert len(report["returns_fp32"]) == len(report["returns_int8"]) == 3
    assert report["return_difference"] == pytest.approx(report["return_int8"] - report["return_fp32"])
    runtime = PolicyRuntime(tmp_path / "q.onnx")  # a quantized model loads and steps like any other
    assert np.isfinite(
        runtime.step({k: np.zeros(s["shape"][1:], np.float32) for k, s in zip(runtime.obs_keys, runtime.meta["inputs"])})
    ).all()
    assert main([*common, "-o", str(tmp_path / "refused.onnx"), "--max-deviation", "0"]) == 2
    assert "int8 export refused: mean |Δaction|" in capsys.readouterr().err
    assert not any(tmp_path.glob("refused*"))


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

    def signature(meta):  # without what changes with the bytes or the versions
        meta = {k: v for k, v in meta.items() if k not in ("sha256", "torch", "onnxruntime_tested")}
        for part in ("observe", "advance"):
            if part in meta:
                meta[part] = {k: v for k, v in meta[part].items() if k not in ("sha256", "bytes")}
        return meta

    fresh = export_all(tmp_path)
    for name, sidecar in fresh.items():
        assert signature(json.loads((FOLDER / f"{name}.onnx.json").read_text())) == signature(sidecar), name
        old, new = PolicyRuntime(FOLDER / f"{name}.onnx"), PolicyRuntime(tmp_path / f"{name}.onnx")
        rng = np.random.default_rng(0)
        for _ in range(20):
            obs = {k: rng.integers(0, 255, s["shape"][1:]).astype(s["dtype"]) for k, s in zip(old.obs_keys, old.meta["inputs"])}
            noise = rng.random(old.noise_dim, dtype=np.float32)
            np.testing.assert_allclose(old.step(obs, noise), new.step(obs, noise), atol=1e-6, err_msg=name)


def test_int8_export_of_a_pixel_policy_quantizes_its_convolutions_statically(tmp_path):
    """A pixel policy's int8 export: the convolutions with 32 input channels or more get per-channel int8 weights and
    calibrated uint8 activations (QDQ), the first (3 channels) stays fp32, the matrix products are dynamic int8; the
    deviation report is computed, and a bound it exceeds refuses the export."""
    import onnx
    from onnx import numpy_helper

    from reverie.realtime.quantize import CALIBRATION_STEPS, export_quantized

    env = envs.make("fake/pixels", seed=0)
    agent = make_agent(env, ("size=1m", "obs=pixels", "size.depth=16"))  # the 12m encoder's channels: 3, 32, 48, 64
    make_env = lambda seed: envs.make("fake/pixels", seed=seed, length=20)  # noqa: E731
    meta = export_quantized(agent, tmp_path / "q.onnx", obs_space=env.obs_space, make_env=make_env, bound=1.0, steps=60, episodes=2)
    quant = meta["quantize"]
    assert quant["ops"] == ["MatMul", "Gemm", "Conv"] and quant["calibration_observations"] == CALIBRATION_STEPS
    assert quant["static_convolutions"] == 3
    report = quant["report"]
    assert report["steps"] == 60 and 0 <= report["mean_abs_action"] <= report["max_abs_action"] <= 2.0
    assert len(report["returns_int8"]) == 2
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    dequantized = {node.output[0]: node.input for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 4
    assert weights[convs[0].input[1]].dtype == np.float32 and weights[convs[0].input[1]].shape[1] == 3
    for conv in convs[1:]:
        # Input and weight come through DequantizeLinear: uint8 activations, int8 weights with one scale per output channel.
        x, w = dequantized[conv.input[0]], dequantized[conv.input[1]]
        assert weights[w[0]].dtype == np.int8 and weights[w[1]].shape == (weights[w[0]].shape[0],)
        assert weights[x[2]].dtype == np.uint8
    runtime = PolicyRuntime(tmp_path / "q.onnx")
    assert np.isfinite(runtime.step(make_env(5).reset(seed=5))).all()
    with pytest.raises(ValueError, match="int8 export refused"):
        export_quantized(agent, tmp_path / "r.onnx", obs_space=env.obs_space, make_env=make_env, bound=0.0, steps=60, episodes=1)
    assert not any(tmp_path.glob("r.*"))


def test_static_quantization_skips_narrow_convolutions_and_needs_the_models_keys(tmp_path):
    """The 1m encoder's convolutions (3–16 input channels) run slower in int8 here: they stay fp32. Calibration
    observations without the model's keys are refused by name."""
    import onnx

    from reverie.realtime.quantize import quantize_bytes

    env = envs.make("fake/pixels", seed=0)
    export(make_agent(env, ("size=1m", "obs=pixels")), env, tmp_path / "p.onnx", split=False)
    data = (tmp_path / "p.onnx").read_bytes()
    quantized = onnx.load_from_string(quantize_bytes(data, "int8", [env.reset(seed=0)]))
    assert not [node for node in quantized.graph.node if node.op_type == "QuantizeLinear"]
    assert len([node for node in quantized.graph.node if node.op_type == "MatMulInteger"]) > 0
    wide = make_agent(env, ("size=1m", "obs=pixels", "size.depth=16"))
    export(wide, env, tmp_path / "w.onnx", split=False)
    with pytest.raises(ValueError, match=r"lack the model's inputs \['obs/image'\]"):
        quantize_bytes((tmp_path / "w.onnx").read_bytes(), "int8", [{"other": np.zeros(3, np.float32)}])
