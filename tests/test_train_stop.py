"""``reverie train`` stops on Ctrl-C / SIGTERM at the episode's end with a checkpoint, and the rerun continues exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, wait_until

from reverie.agent.train import Trainer
from reverie.cli.config import compose
from reverie.cli.main import stop_after_episode

# Episodes are 16 agent steps (the reset observation plus 15 steps).
COMMON = ["env=fake/vector", "env.time_limit=15", "eval_episodes=0", "checkpoint_every=1000000", *TINY]


def episode_steps(logdir: Path) -> list[int]:
    lines = (logdir / "metrics.jsonl").read_text().splitlines() if (logdir / "metrics.jsonl").exists() else []
    return [m["step"] for m in map(json.loads, lines) if "episode/return" in m]


def test_sigint_stops_at_the_episode_end_and_the_rerun_continues_exactly(tmp_path):
    run = tmp_path / "stopped"
    overrides = [*COMMON, "steps=1000000", f"logdir={run}", "progress=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "reverie.cli.main", "train", *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: len(episode_steps(run)) >= 3, 120, "three episodes logged")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "stopping at the end of this episode" in err and "stopped:" in out
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    stopped_at = state["counters"]["agent_steps"]
    assert stopped_at % 16 == 0 and stopped_at >= 48  # an episode boundary, after the episodes seen
    assert (run / "policy.onnx").exists()  # the stopped run still leaves its deployable policy

    # Continue two more episodes; an uninterrupted run to the same step must be the same run.
    total = stopped_at + 32  # env steps: fake/vector has no action repeat
    resumed = Trainer(compose([*COMMON, f"steps={total}", f"logdir={run}"]))
    assert resumed.resumed
    resumed.run()
    straight = Trainer(compose([*COMMON, f"steps={total}", f"logdir={tmp_path / 'straight'}"]))
    straight.run()
    assert resumed.counters["updates"] == straight.counters["updates"]
    a, b = straight.agent.state_dict(), resumed.agent.state_dict()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6
    assert episode_steps(run) == episode_steps(tmp_path / "straight")


def test_second_signal_stops_at_once():
    class Run:
        stopping = False

        def stop(self) -> None:
            self.stopping = True

    handler = stop_after_episode(run := Run())
    handler(signal.SIGTERM, None)
    assert run.stopping
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)


def test_a_stop_before_run_ends_it_at_the_first_episode_end(tmp_path):
    trainer = Trainer(compose([*COMMON, "steps=1000", f"logdir={tmp_path / 'run'}"]))
    trainer.stop()
    summary = trainer.run()
    assert summary["stopped"] and summary["env_steps"] == 16
    assert episode_steps(tmp_path / "run") == [16]
