"""Deploy and keep learning: a simulation run's checkpoint resumed by the learner, its policy on the perturbed stand-in robot."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from conftest import TINY

from reverie.cli.config import compose
from reverie.cli.main import main


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_deploy_resumes_the_simulation_run_and_keeps_learning_on_the_robot(tmp_path):
    from reverie.realtime.actor import Actor
    from reverie.realtime.learner import Learner
    from reverie.realtime.runtime import PolicyRuntime

    common = [*TINY, "env=dmc/cartpole_swingup", "eval_episodes=0", "report_every=0"]
    sim, deploy = tmp_path / "sim", tmp_path / "deploy"
    # 1. Train in simulation (randomised), as `reverie train` does.
    randomized = ["env.randomize.mass=[0.8,1.2]", "env.randomize.act_delay=1"]
    assert main(["train", *common, *randomized, "steps=100", f"logdir={sim}"]) == 0
    sim_counters = torch.load(sim / "checkpoint.pt", weights_only=False)["counters"]
    assert (sim / "policy.onnx").exists() and sim_counters["updates"] > 0

    # 2. A copy of the run: the learner resumes its checkpoint and replay (only realtime.* and steps differ).
    shutil.copytree(sim, deploy)
    cfg = compose(
        [
            *common,
            *randomized,
            "steps=100000000",
            f"logdir={deploy}",
            f"realtime.ipc_dir={tmp_path / 'ipc'}",
            "realtime.robot=true",
            "realtime.robot_perturb.mass=[1.4,1.4]",
            "realtime.robot_perturb.obs_noise=0.01",
            "realtime.safety.max_delta=0.5",
            f"realtime.initial_policy={sim / 'policy.onnx'}",
            "realtime.publish_every=5",
            "realtime.chunk=16",
        ]
    )
    learner = Learner(cfg)
    assert learner.book.resumed and learner.counters["agent_steps"] == sim_counters["agent_steps"]
    assert learner.counters["updates"] == sim_counters["updates"] and len(learner.replay) == sim_counters["agent_steps"]

    # 3. The actor on the perturbed robot starts with the simulation's policy, streams, and swaps in new weights.
    actor = Actor(cfg)
    assert isinstance(actor.loop.policy, PolicyRuntime) and actor.loop.policy.version == 0
    robot = json.loads((deploy / "actors" / "actor0" / "robot.json").read_text())
    assert robot["perturbation"]["mass/cart"] == pytest.approx(1.4)
    result: dict = {}
    actor_thread = threading.Thread(target=lambda: result.update(actor.run(seconds=6.0, handle_signals=False)))
    learner_thread = threading.Thread(target=lambda: learner.run(handle_signals=False))
    learner_thread.start()
    actor_thread.start()
    actor_thread.join(60)
    sent = result["sender_seq"]
    deadline = time.monotonic() + 10
    while learner.receiver.tracker.actors.get("actor0", {}).get("next", 0) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    learner.stop()
    learner_thread.join(60)

    # Nothing lost: every message numbered arrived, every step recorded is in the learner's count and replay.
    entry = learner.receiver.tracker.actors["actor0"]
    assert entry["messages"] == sent and entry["missing"] == 0 and result["sender_dropped"] == 0
    assert entry["steps"] == result["steps_recorded"] > 200  # ~300 ticks at 50 Hz
    assert learner.counters["agent_steps"] == sim_counters["agent_steps"] + result["steps_recorded"]
    assert len(learner.replay) == learner.counters["agent_steps"]
    # It kept learning and the robot got new weights.
    assert learner.counters["updates"] > sim_counters["updates"] and learner.counters["version"] >= 2
    assert result["swaps"] >= 1 and result["policy_version"] >= 1 and result["weights_refused"] == 0
    assert result["estops"] == 0
    # The checkpoint on the way out holds both parts of the history.
    final = torch.load(deploy / "checkpoint.pt", weights_only=False)["counters"]
    assert final["agent_steps"] == learner.counters["agent_steps"]
    # The simulation run is untouched.
    assert torch.load(sim / "checkpoint.pt", weights_only=False)["counters"] == sim_counters


def test_an_actor_refusing_its_initial_policy_closes_what_it_built(tmp_path, monkeypatch):
    """A bad realtime.initial_policy is one clear error, and the environment, sockets and scratch folder are closed again."""
    from reverie import envs
    from reverie.realtime import actor as actor_module

    closed = []
    make = envs.from_config

    def recording(cfg, seed):
        env = make(cfg, seed)
        inner_close = env.close
        env.close = lambda: (closed.append("env"), inner_close())
        return env

    monkeypatch.setattr(actor_module.envs, "from_config", recording)
    terms, term = [], actor_module.zmq.Context.term
    monkeypatch.setattr(actor_module.zmq.Context, "term", lambda self: terms.append(self) or term(self))
    bad = tmp_path / "policy.onnx"
    bad.write_bytes(b"not a model")
    cfg = compose(
        [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", f"realtime.initial_policy={bad}"]
    )
    with pytest.raises(ValueError, match="initial_policy|policy"):
        actor_module.Actor(cfg)
    assert closed == ["env"] and len(terms) == 1
