"""The asynchronous actor/learner: recorder, learner bookkeeping, a loopback run, and process faults."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import TINY, chunk_of, wait_until

from reverie.cli.config import compose
from reverie.realtime.protocol import Experience
from reverie.realtime.recorder import ExperienceRecorder, experience_schema

SCHEMA = {
    "x": ("float32", (2,)),
    "reward": ("float32", ()),
    "is_first": ("bool", ()),
    "is_last": ("bool", ()),
    "is_terminal": ("bool", ()),
    "action": ("float32", (1,)),
    "deter": ("float16", (3,)),
    "stoch": ("uint8", (2,)),
}


class FakeRuntime:
    """Looks like a PolicyRuntime to the recorder: a version and the latent of its last step."""

    def __init__(self, version):
        self.version = version
        self.stoch = np.zeros((2, 4), np.float32)
        self.stoch[0, 3] = self.stoch[1, 1] = 1

    def latent(self):
        return np.array([1.0, 2.0, 3.0], np.float32), self.stoch


def obs(i, first=False, last=False, x=None):
    return {
        "x": np.full(2, i, np.float32) if x is None else x,
        "reward": np.float32(i),
        "is_first": np.bool_(first),
        "is_last": np.bool_(last),
        "is_terminal": np.bool_(False),
    }


def test_recorder_chunks_by_size_episode_and_policy_version():
    sent = []
    rec = ExperienceRecorder(
        lambda a, episode, policy: sent.append(({k: v.copy() for k, v in a.items()}, episode, policy)), SCHEMA, chunk=4
    )
    p1, p2 = FakeRuntime(1), FakeRuntime(2)
    for i in range(6):
        rec.record(obs(i, first=i == 0), np.array([0.5], np.float32), p1)
    rec.record(obs(6, last=True), None, p1)  # end of episode: flush 3 steps
    rec.record(obs(0, first=True), np.array([0.1], np.float32), p1)
    rec.record(obs(1), np.array([0.2], np.float32), p2)  # new version: flush before it
    rec.flush()
    assert [(len(a["x"]), ep, v) for a, ep, v in sent] == [(4, 0, 1), (3, 0, 1), (1, 1, 1), (1, 1, 2)]
    first = sent[0][0]
    assert first["is_first"].tolist() == [True, False, False, False]
    assert np.array_equal(first["deter"][0], np.array([1, 2, 3], np.float16)) and first["stoch"][0].tolist() == [3, 1]
    last_chunk = sent[1][0]
    # The is_last step has no action and no latent (the loop runs no policy step on it).
    assert last_chunk["is_last"].tolist() == [False, False, True] and last_chunk["action"][-1] == 0 and last_chunk["deter"][-1].sum() == 0
    assert rec.steps == 9 and rec.episode == 1


def test_recorder_skips_nonfinite_steps_and_breaks_the_sequence():
    sent = []
    rec = ExperienceRecorder(lambda a, episode, policy: sent.append({k: v.copy() for k, v in a.items()}), SCHEMA, chunk=8)
    policy = FakeRuntime(1)
    rec.record(obs(0, first=True), np.zeros(1, np.float32), policy)
    rec.record(obs(1, x=np.array([np.nan, 0], np.float32)), np.zeros(1, np.float32), policy)
    rec.record(obs(2), np.zeros(1, np.float32), policy)
    rec.flush()
    assert rec.skipped == 1 and len(sent) == 1
    assert sent[0]["reward"].tolist() == [0, 2] and sent[0]["is_first"].tolist() == [True, True]


def test_recorder_refuses_a_wrong_dtype_and_breaks_the_sequence():
    """A driver sending float64 where the stream carries float32 is fine; an image in the wrong dtype is not."""
    schema = {**SCHEMA, "image": ("uint8", (2, 2, 3))}
    sent = []
    rec = ExperienceRecorder(lambda a, episode, policy: sent.append({k: v.copy() for k, v in a.items()}), schema, chunk=8)
    policy = FakeRuntime(1)
    image = np.zeros((2, 2, 3), np.uint8)
    rec.record({**obs(0, first=True, x=np.zeros(2, np.float64)), "image": image}, np.zeros(1, np.float32), policy)
    with pytest.raises(ValueError, match="'image': dtype float32"):
        rec.record({**obs(1), "image": image.astype(np.float32) / 255}, np.zeros(1, np.float32), policy)
    rec.record({**obs(2), "image": image, "is_last": 0}, np.zeros(1, np.float32), policy)  # an int flag is fine
    rec.flush()
    assert rec.skipped == 1 and sent[0]["reward"].tolist() == [0, 2] and sent[0]["is_first"].tolist() == [True, True]


def test_launcher_gives_up_only_on_a_crash_loop(monkeypatch):
    from reverie.realtime import launcher

    class Proc:
        restarts, restart_times, starts = 0, [], 0

        def start(self):
            self.starts += 1

    proc = Proc()
    monkeypatch.setattr(launcher.sys, "stderr", open(os.devnull, "w"))
    window = launcher.RESTART_WINDOW_S
    for i in range(3 * launcher.MAX_RESTARTS):  # rare crashes, spread out: always restarted
        launcher._restart(proc, "died", now=i * window / 2)
    assert proc.starts == 3 * launcher.MAX_RESTARTS
    t = 100 * window
    for i in range(launcher.MAX_RESTARTS):  # a crash loop: the last allowed restart, then refused
        launcher._restart(proc, "died", now=t + i)
    with pytest.raises(RuntimeError, match="gave up"):
        launcher._restart(proc, "died", now=t + launcher.MAX_RESTARTS)


def tiny_cfg(tmp_path, *extra):
    return compose([*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", *extra])


def test_learner_ingest_marks_seams_counts_returns_and_earns_credit(tmp_path):
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path))
    try:
        schema = learner.receiver.schema
        a = Experience("a", 0, 0, 1, chunk_of(schema, 10, first=True), session=5)
        b = Experience("b", 0, 0, 1, chunk_of(schema, 10), session=7)  # b's episode started before we listened
        a2 = Experience("a", 0, 1, 1, chunk_of(schema, 10, last=True), session=5)  # follows a, but b came between
        a3 = Experience("a", 1, 2, 1, chunk_of(schema, 10, first=True, last=True, reward=2.0), session=5)
        for exp in (a, b, a2, a3):
            learner.ingest(exp)
        firsts = learner.replay.data["is_first"][:40].reshape(4, 10)[:, 0]
        assert firsts.tolist() == [True, True, True, True]  # seams start a sequence
        assert learner.counters["agent_steps"] == 40 and learner.env_steps == 40
        # a's first episode lost its continuity (b in between): no return logged; a3's is 9 × 2.
        assert learner.counters["episodes"] == 2 and learner.last_return == pytest.approx(18.0)
        # TINY: train_start 16, ratio 32 / (4 × 8) = 1 update per step once ready.
        assert learner.counters["train_credit"] == pytest.approx(30.0)
    finally:
        learner.close()


def test_learner_checkpoint_keeps_stream_accounting_and_version(tmp_path):
    from reverie.realtime.learner import Learner

    cfg = tiny_cfg(tmp_path)
    learner = Learner(cfg)
    schema = learner.receiver.schema
    for seq in (0, 1, 3):  # 2 never arrived
        exp = Experience("a", 0, seq, 1, chunk_of(schema, 8, first=seq == 0), session=9)
        assert learner.receiver.tracker.accept(exp)
        learner.ingest(exp)
    learner.publish()
    learner.save()
    learner.publish()  # published after the checkpoint: the number must not be reused
    learner.close()
    again = Learner(cfg)
    try:
        entry = again.receiver.tracker.actors["a"]
        assert (entry["messages"], entry["missing"], entry["next"]) == (3, 1, 4)
        assert again.counters["agent_steps"] == 24 and again.counters["version"] == 2
        assert again.publish() == 3
    finally:
        again.close()


def test_a_backlog_does_not_carry_the_learner_past_its_steps(tmp_path):
    """30 chunks of 10 steps wait in the socket; a learner told to stop at 100 takes 10 of them, not all."""
    from reverie.realtime.channels import ExperienceSender
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path, "steps=100", "eval_episodes=0", "report_every=0"))
    sender = ExperienceSender(learner.addresses.experience, "a", session=1)
    schema = learner.receiver.schema
    for i in range(30):
        sender.send(chunk_of(schema, 10, first=i % 5 == 0, last=i % 5 == 4), episode=i // 5, policy=0)
    assert sender.flush(10.0)
    wait_until(lambda: learner.receiver.wait(0.05), 10, "the chunks reach the learner's socket")
    learner.run(handle_signals=False)
    sender.close()
    assert learner.repeat == 1 and learner.env_steps == 100  # exactly: every chunk holds 10 steps
    assert learner.receiver.tracker.actors["a"]["messages"] == 10  # the other 20 were never taken


@pytest.mark.parametrize("algo", ["dreamerv3", "dreamerv1", "dreamerv2"])
def test_loopback_run_swaps_weights_and_accounts_for_every_transition(algo, tmp_path):
    from reverie.realtime.actor import Actor
    from reverie.realtime.learner import Learner

    cfg = tiny_cfg(
        tmp_path,
        f"algo={algo}",
        "steps=100000000",
        "realtime.rate_hz=200",
        "realtime.publish_every=5",
        "realtime.chunk=16",
        "eval_episodes=0",
    )
    learner = Learner(cfg)
    actor = Actor(cfg)
    result = {}
    thread = threading.Thread(target=lambda: result.update(actor.run(seconds=6.0, handle_signals=False)))
    thread.start()
    learner_thread = threading.Thread(target=lambda: learner.run(handle_signals=False))
    learner_thread.start()
    thread.join(30)
    deadline = time.monotonic() + 10
    sent = result["sender_seq"]
    while learner.receiver.tracker.actors.get("actor0", {}).get("next", 0) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    learner.stop()
    learner_thread.join(60)
    entry = learner.receiver.tracker.actors["actor0"]
    # Every message the actor numbered arrived or is counted; nothing was dropped on a healthy loopback.
    assert entry["messages"] + entry["missing"] == sent and entry["missing"] == 0
    assert result["sender_dropped"] == 0 and result["sender_enqueued"] == result["sender_sent"]
    assert entry["steps"] == result["steps_recorded"] == learner.counters["agent_steps"]
    assert learner.counters["version"] >= 2 and result["swaps"] >= 1 and result["policy_version"] >= 1
    assert result["weights_refused"] == 0 and learner.counters["updates"] > 0
    assert (tmp_path / "run" / "curve.png").exists() and (tmp_path / "run" / "actors" / "actor0" / "latency.png").exists()
    assert (tmp_path / "run" / "policy.onnx").exists()


# ------------------------------------------------------------- processes
def _reverie(role, cfg_args, log):
    return subprocess.Popen(
        [sys.executable, "-m", "reverie.cli.main", role, *cfg_args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _json(path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _settled(path, key, quiet, timeout):
    """The status at ``path`` once ``key`` has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    status = _json(path)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _json(path)
        if now.get(key) != status.get(key):
            since = time.monotonic()
        status = now
        if time.monotonic() - since >= quiet:
            return status
    raise AssertionError(f"{key} in {path} kept changing for {timeout} s")


@pytest.mark.timeout(300)
def test_kill9_learner_and_actor_then_restart_and_account(tmp_path):
    args = [
        *TINY,
        "env=fake/vector",
        f"logdir={tmp_path / 'run'}",
        f"realtime.ipc_dir={tmp_path / 'ipc'}",
        "steps=100000000",
        "realtime.rate_hz=100",
        "realtime.publish_every=5",
        "realtime.chunk=10",
        "checkpoint_every=300",
        "eval_episodes=0",
        "realtime.status_every_s=0.2",
    ]
    run = tmp_path / "run"
    learner_status, actor_status = run / "status.json", run / "actors" / "actor0" / "status.json"
    log = open(tmp_path / "log.txt", "ab")
    learner = _reverie("learner", args, log)
    actor = _reverie("actor", args, log)
    try:
        wait_until(lambda: (run / "checkpoint.pt").exists() and _json(learner_status).get("policy_version", 0) >= 2, 120, "a checkpoint")
        wait_until(lambda: _json(actor_status).get("policy_version", 0) >= 1, 30, "the actor's first swap")
        # kill -9 the learner: the actor keeps its tick rate with the last policy.
        os.kill(learner.pid, signal.SIGKILL)
        learner.wait()
        # Weights published just before the kill may still be on their way into the actor (received, being
        # built or waiting for the next tick): wait until its policy version has stood still for a second.
        before = _settled(actor_status, "policy_version", quiet=1.0, timeout=30)
        time.sleep(2.0)
        after = _json(actor_status)
        ticks = after["ticks"] - before["ticks"]
        assert 150 <= ticks <= 210, ticks  # ~100 Hz over 2 s (status snapshots are 0.2 s apart)
        assert after["policy_version"] == before["policy_version"] and after["deadline_misses"] - before["deadline_misses"] <= 2
        # Restart: it resumes checkpoint and replay, the actor reconnects and streaming resumes.
        learner = _reverie("learner", args, log)
        resumed_from = torch_counters(run)["agent_steps"]
        wait_until(lambda: _json(learner_status).get("agent_steps", 0) > resumed_from + 50, 120, "streaming to resume")
        wait_until(lambda: _json(actor_status).get("weights_accepted", 0) > after["weights_accepted"], 60, "new weights after the restart")
        # Stop the actor cleanly: everything it numbered is received or counted missing.
        actor.send_signal(signal.SIGTERM)
        assert actor.wait(30) == 0
        final = _json(actor_status)
        wait_until(lambda: _json(learner_status)["received"]["actor0"]["next"] == final["sender_seq"], 30, "the last messages")
        entry = _json(learner_status)["received"]["actor0"]
        assert entry["messages"] + entry["missing"] == final["sender_seq"]
        assert final["sender_enqueued"] == final["sender_sent"] + final["sender_dropped"]
        # kill -9 an actor: the learner carries on, and a restarted actor rejoins under a new session.
        actor = _reverie("actor", args, log)
        wait_until(lambda: _json(learner_status)["received"]["actor0"]["sessions"] == 2, 60, "the second actor session")
        os.kill(actor.pid, signal.SIGKILL)
        actor.wait()
        time.sleep(1.0)
        assert learner.poll() is None
        steps = _json(learner_status)["received"]["actor0"]["steps"]
        actor = _reverie("actor", args, log)
        wait_until(lambda: _json(learner_status)["received"]["actor0"]["sessions"] == 3, 60, "the third actor session")
        wait_until(lambda: _json(learner_status)["received"]["actor0"]["steps"] > steps + 50, 60, "the rejoined actor's data")
        actor.send_signal(signal.SIGTERM)
        assert actor.wait(30) == 0
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(120) == 0
    finally:
        for proc in (learner, actor):
            if proc.poll() is None:
                proc.kill()
        log.close()


def torch_counters(run):
    import torch

    return torch.load(run / "checkpoint.pt", weights_only=False)["counters"]


def test_schema_is_the_replay_step():
    from reverie import envs

    env = envs.make("fake/vector")
    schema = experience_schema(env.obs_space, env.act_space, deter=32, stoch=4)
    assert schema["action"] == ("float32", (3,)) and schema["deter"] == ("float16", (32,)) and schema["stoch"] == ("uint8", (4,))
    assert set(schema) == {*env.obs_space, "action", "deter", "stoch"}


def test_status_socket_survives_garbage_and_answers(tmp_path):
    import zmq

    from reverie.realtime.learner import Learner, query_status

    learner = Learner(tiny_cfg(tmp_path))
    try:
        learner._refresh_status()
        learner._status_server.start()
        rng = np.random.default_rng(0)
        ctx = zmq.Context()
        for i in range(1000):  # random requests, including oversized ones (dropped by MAXMSGSIZE)
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.connect(learner.addresses.status)
            req.send(rng.bytes(int(rng.integers(0, 10_000 if i % 10 == 0 else 200))))
            if req.poll(50):
                req.recv()
            req.close(0)
        ctx.term()
        status = query_status(learner.addresses.status, timeout_s=5.0)
        assert status["role"] == "learner" and status["env_steps"] == 0
    finally:
        learner.close()


def test_curve_learner_takes_only_allowed_actors(tmp_path):
    from reverie.realtime.actor import Actor
    from reverie.realtime.learner import Learner
    from reverie.realtime.security import generate_keys

    keys = tmp_path / "keys"
    generate_keys(keys, ("learner", "actor0"))
    intruder = tmp_path / "intruder"
    generate_keys(intruder, ("actor1",))
    secure = ["realtime.curve=true", f"realtime.keys={keys}", "realtime.rate_hz=200", "realtime.chunk=8", "eval_episodes=0"]
    learner = Learner(tiny_cfg(tmp_path, *secure))
    good = Actor(tiny_cfg(tmp_path, *secure))
    # actor1 has a key pair, but it is not among the learner's allowed keys.
    (keys / "actor1.key_secret").write_bytes((intruder / "actor1.key_secret").read_bytes())
    evil = Actor(tiny_cfg(tmp_path, *secure, "realtime.actor_id=actor1"))
    learner.publish()
    threads = [threading.Thread(target=a.run, kwargs={"seconds": 3.0, "handle_signals": False}) for a in (good, evil)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        for exp in learner.receiver.receive(timeout=0.05):
            learner.ingest(exp)
        learner.publisher.republish()
    for t in threads:
        t.join(10)
    learner.close()
    assert set(learner.receiver.tracker.actors) == {"actor0"} and learner.counters["agent_steps"] > 100
    assert good.status()["weights_accepted"] == 1 and evil.status()["weights_accepted"] == 0


def test_actor_refuses_a_policy_with_a_nonfinite_warmup_action(tmp_path, monkeypatch):
    """A published policy whose warm-up action is NaN is refused (the actor keeps its policy).

    Export already refuses NaN weights; this is the actor's own check, for a
    model that is finite on the exporter's inputs but not on the actor's.
    """
    from conftest import make_agent

    from reverie import envs
    from reverie.realtime import actor as actor_module
    from reverie.realtime.export import export_policy
    from reverie.realtime.signature import read_payload

    env = envs.make("fake/vector", seed=0)
    sidecar = export_policy(make_agent(env, overrides=tuple(TINY)), tmp_path / "p.onnx", obs_space=env.obs_space)

    class NaNRuntime(actor_module.PolicyRuntime):
        def step(self, obs, noise=None):
            return np.full(self.meta["action"]["dim"], np.nan, np.float32)

    monkeypatch.setattr(actor_module, "PolicyRuntime", NaNRuntime)
    actor = actor_module.Actor(tiny_cfg(tmp_path))
    try:
        with pytest.raises(ValueError, match="non-finite action"):
            actor._build(read_payload(tmp_path / "p.onnx", sidecar), sidecar)
    finally:
        actor.close()


def test_the_learner_process_is_niced_across_sessions_too(tmp_path):
    """The launcher's niced child runs in a session of its own; where Linux schedules by autogroup, its group
    gets the same nice value, or the nice would weigh nothing against the actors (each in a group of its own)."""
    from reverie.realtime import launcher

    child = launcher._Process("learner", [sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log", nice=7)
    child.start()
    try:
        pid = child.popen.pid
        assert os.getsid(pid) == pid  # a session of its own
        assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        group = f"/proc/{pid}/autogroup"
        if os.path.exists(group):  # a kernel with autogroup scheduling (CI's and this machine's)
            with open(group) as f:
                assert f.read().split()[-2:] == ["nice", "7"]
    finally:
        child.stop()
