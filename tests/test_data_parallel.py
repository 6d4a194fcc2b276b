"""`reverie train` and `reverie learner` on 2 ranks under torchrun (gloo on the CPU): outputs, exact resume, actors, faults."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import TINY, wait_until

from reverie.cli.config import compose

ROOT = Path(__file__).resolve().parent.parent
# torchrun jobs of two ranks: they run alone, after the parallel part of `make test` (pyproject: markers).
pytestmark = [pytest.mark.slow, pytest.mark.serial]


def torchrun(args, *, restarts=0):
    """The command of a 2-rank job of ``reverie <args>`` (torchrun as a user runs it; --standalone: a free port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        f"--max-restarts={restarts}",
        "--monitor-interval=0.5",
        "-m",
        "reverie.cli.main",
        *args,
    ]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_jobs(*jobs, timeout=240):
    """Runs 2-rank jobs side by side (their start-up, mostly importing torch, overlaps) and checks that each succeeded."""
    procs = [subprocess.Popen(torchrun(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT) for args in jobs]
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out.decode(errors="replace")[-5000:]


def rank_pids(parent):
    """``{rank: pid}`` of the workers torchrun ``parent`` started (read from their environment)."""
    found = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(child)
    return found


def counters(run):
    return torch.load(run / "checkpoint.pt", weights_only=False)


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


COMMON = [*TINY, "env=fake/vector", "env.time_limit=15", "eval_episodes=0", "checkpoint_every=1000000", "report_every=0"]


def test_two_rank_train_writes_one_run_and_resumes_exactly(tmp_path):
    """Rank 0 alone writes; a job stopped at 32 steps and resumed ends where an uninterrupted one does."""
    a, b = tmp_path / "a", tmp_path / "b"
    run_jobs(["train", *COMMON, "steps=64", f"logdir={a}"], ["train", *COMMON, "steps=32", f"logdir={b}"])
    run_jobs(["train", *COMMON, "steps=64", f"logdir={b}"])
    # One run's files, written once: one checkpoint, one metrics stream, no per-rank copies.
    assert sorted(p.name for p in a.iterdir() if p.is_file()) == [
        "checkpoint.pt",
        "config.yaml",
        "curve.png",
        "metrics.jsonl",
        "policy.advance.onnx",
        "policy.onnx",
        "policy.onnx.json",
    ]
    episodes = [m["step"] for m in read_lines(a / "metrics.jsonl") if "episode/return" in m]
    assert episodes == [16, 32, 48, 64]  # each episode logged once, by rank 0
    straight, resumed = counters(a), counters(b)
    assert len(straight["ranks"]) == 2
    # TINY: ratio 32 over 2 ranks × 4 × 8 replayed steps per update: one update per 2 agent steps from step 16.
    assert straight["counters"]["updates"] == resumed["counters"]["updates"] == 24
    worst = max((straight["agent"][k].float() - resumed["agent"][k].float()).abs().max().item() for k in straight["agent"])
    assert worst <= 1e-6, worst
    # Rank 1's own draws resumed too: its generator is where the uninterrupted job's rank 1 left it.
    assert torch.equal(straight["ranks"][1]["rng"]["torch"], resumed["ranks"][1]["rng"]["torch"])
    assert straight["ranks"][1]["replay_rng"] == resumed["ranks"][1]["replay_rng"]
    assert straight["ranks"][1]["replay_rng"] != straight["ranks"][0]["replay_rng"]  # each rank samples its own batches
    # Metric windows after 60 cover the same updates in both (the one at 60 began at 40 in one and at 48 in the other).
    # The metric windows after step 40 cover the same updates in both runs (the one at 40 opened at 20 in one, at 32 in the other).
    losses = lambda run: [m["loss/total"] for m in read_lines(run / "metrics.jsonl") if m["step"] > 40 and "loss/total" in m]  # noqa: E731
    assert losses(a) == pytest.approx(losses(b), abs=1e-6) and losses(a)


def test_two_rank_learner_fed_by_one_actor(tmp_path):
    """Rank 0 receives and publishes; the actor swaps weights in; every transition arrives in both ranks' replays."""
    from reverie.realtime.actor import Actor

    args = [
        *TINY,
        "env=fake/vector",
        f"logdir={tmp_path / 'run'}",
        f"realtime.ipc_dir={tmp_path / 'ipc'}",
        "steps=100000000",
        "realtime.rate_hz=200",
        "realtime.publish_every=3",
        "realtime.chunk=16",
        "realtime.status_every_s=0.2",
        "eval_episodes=0",
        "report_every=0",
    ]
    run, status_path = tmp_path / "run", tmp_path / "run" / "status.json"
    log = open(tmp_path / "learner.log", "wb")
    job = subprocess.Popen(torchrun(["learner", *args]), stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
    try:
        wait_until(lambda: status_path.exists(), 180, "the learner's first status")
        status = lambda: json.loads(status_path.read_text())  # noqa: E731
        assert status()["ranks"] == 2
        actor = Actor(compose(args))
        result = {}
        thread = threading.Thread(target=lambda: result.update(actor.run(seconds=8.0, handle_signals=False)))
        thread.start()
        thread.join(60)
        sent = result["sender_seq"]
        wait_until(lambda: status()["received"].get("actor0", {}).get("next", 0) == sent, 60, "the last messages")
        wait_until(lambda: status()["updates"] > 0, 60, "updates")
        os.kill(rank_pids(job.pid)[0], signal.SIGTERM)  # rank 0 stops the job: every rank checkpoints the same update
        assert job.wait(120) == 0, (tmp_path / "learner.log").read_text()[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    saved = counters(run)
    entry = saved["counters"]["tracker"]["actor0"]
    assert entry["messages"] + entry["missing"] == sent and entry["missing"] == 0
    assert saved["counters"]["agent_steps"] == result["steps_recorded"] == entry["steps"]
    assert result["swaps"] >= 1 and result["policy_version"] >= 2 and result["weights_refused"] == 0
    assert saved["counters"]["version"] >= 2 and saved["counters"]["updates"] > 0 and len(saved["ranks"]) == 2
    assert (run / "policy.onnx").exists()


def test_a_rank_that_dies_ends_the_job_with_a_message_and_the_checkpoint_resumes(tmp_path):
    """kill -9 rank 1: rank 0 says why it stops, torchrun ends the attempt; its restart resumes the checkpoint and finishes."""
    run = tmp_path / "run"
    args = [*TINY, "env=fake/vector", "env.time_limit=15", "eval_episodes=0", "report_every=0", "checkpoint_every=16", "steps=160"]
    log_path = tmp_path / "job.log"
    log = open(log_path, "wb")
    cmd = torchrun(["train", *args, f"logdir={run}"], restarts=1)
    job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, start_new_session=True)
    try:
        wait_until(lambda: (run / "checkpoint.pt").exists() and counters(run)["counters"]["updates"] > 0, 180, "a checkpoint")
        killed_at = counters(run)["counters"]["agent_steps"]
        os.kill(rank_pids(job.pid)[1], signal.SIGKILL)
        assert job.wait(240) == 0, log_path.read_text()[-4000:]  # the restarted attempt resumed and finished
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    text = log_path.read_text()
    assert "reverie train:" in text and ("stopped answering" in text or "stopped by SIGTERM" in text), text[-4000:]
    assert counters(run)["counters"]["agent_steps"] == 160 and killed_at < 160
    # The restart resumed rather than started over: the first episodes are in the metrics once.
    episodes = [m["step"] for m in read_lines(run / "metrics.jsonl") if "episode/return" in m]
    assert episodes.count(16) == 1 and episodes[-1] == 160
