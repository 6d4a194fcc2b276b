"""`reverie eval`: an exported policy in the fixed-rate loop, on an env and on the robot stand-in."""

import json

import pytest

from reverie.cli.main import main


@pytest.fixture
def exported_policy(tiny_overrides, tmp_path):
    assert main(["train", "env=fake/vector", "env.time_limit=20", "steps=40", *tiny_overrides]) == 0
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "policy.onnx")]) == 0
    return tmp_path / "policy.onnx"


def test_eval_env_reports_returns_latency_and_histogram(exported_policy, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(exported_policy), "rate_hz=200", "episodes=2", f"out={out}"]) == 0
    summary = json.loads((out / "eval.json").read_text())
    assert summary["episodes"] == 2 and len(summary["returns"]) == 2
    assert (out / "latency.png").stat().st_size > 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["env"] == "fake/vector"


def test_eval_bad_arguments(exported_policy, capsys):
    assert main(["eval", str(exported_policy), "speed=3"]) == 2
    assert "unknown argument" in capsys.readouterr().err
    assert main(["eval", str(exported_policy.parent / "missing.onnx")]) == 2
    capsys.readouterr()
    assert main(["eval", str(exported_policy), "env=fake/pixels", "steps=5"]) == 2  # a policy for another env
    assert "does not provide" in capsys.readouterr().err


def test_eval_on_mujoco_robot_stand_in(tmp_path):
    from conftest import make_agent

    from reverie import envs
    from reverie.realtime.evaluate import evaluate_policy
    from reverie.realtime.export import export_policy

    env = envs.make("dmc/cartpole_swingup")
    export_policy(
        make_agent(env),
        tmp_path / "p.onnx",
        obs_space=env.obs_space,
        metadata={"env": "dmc/cartpole_swingup", "obs": "vector"},
    )
    summary = evaluate_policy(tmp_path / "p.onnx", robot=True, rate_hz=50, seconds=1.0, episodes=None, out=tmp_path / "ev")
    assert summary["robot"] and summary["ticks"] >= 40
