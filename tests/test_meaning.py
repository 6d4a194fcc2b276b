"""Validation by meaning: values outside what they mean never reach replay, and a poisoned replay is repaired."""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import zmq
from conftest import TINY, chunk_of, vector_obs_space, wait_for

from reverie.agent.replay import Manifest, Replay
from reverie.cli.config import compose
from reverie.envs.base import Space
from reverie.envs.step_spec import StepError, StepSpec
from reverie.realtime.channels import ExperienceReceiver, ExperienceSender
from reverie.realtime.protocol import Experience, SequenceTracker

CLASSES = 4


def spec(discrete=False):
    act = Space(np.float32, (3,), -1.0, 1.0, discrete=discrete)
    return StepSpec.build(vector_obs_space(), act, deter=8, stoch=5, classes=CLASSES)


def valid(steps=6, discrete=False, first=True, last=False):
    arrays = chunk_of(spec(discrete).schema, steps, first=first, last=last)
    arrays["position"][:] = np.linspace(-3, 3, 5, dtype=np.float32)
    arrays["stoch"][:] = CLASSES - 1
    arrays["deter"][:] = 0.5
    if discrete:
        arrays["action"][:, 1] = 1.0
    else:
        arrays["action"][:] = np.float32(1.0)  # the bound itself is valid
    return arrays


def with_value(arrays, key, value, row=2, col=None):
    out = {k: v.copy() for k, v in arrays.items()}
    if out[key].dtype == bool:  # a byte other than 0/1: what a forged buffer can hold
        out[key].view(np.uint8)[row] = value
    elif col is None:
        out[key][row] = value
    else:
        out[key][row, col] = value
    return out


#: (key, value, column, reason): one value outside its meaning each.
BAD_VALUES = [
    ("stoch", CLASSES, 0, "latent"),
    ("stoch", 255, 4, "latent"),
    ("is_first", 2, None, "bool"),
    ("is_last", 193, None, "bool"),
    ("is_terminal", 2, None, "bool"),
    ("action", 3.3e38, 0, "action"),
    ("action", 1.0001, 2, "action"),
    ("action", -1.0001, 1, "action"),
    ("reward", 1.1e37, None, "magnitude"),
    ("position", 3.4e38, 1, "magnitude"),
    ("position", -2e6, 4, "magnitude"),
    ("deter", np.inf, 3, "nonfinite"),
]


def test_valid_chunks_pass():
    spec().check(valid())
    spec(discrete=True).check(valid(discrete=True))
    zeros = with_value(valid(discrete=True), "action", 0.0)  # what the recorder writes after is_last
    spec(discrete=True).check(zeros)


@pytest.mark.parametrize("key,value,col,reason", BAD_VALUES)
def test_each_value_outside_its_meaning_is_refused_by_reason(key, value, col, reason):
    with pytest.raises(StepError, match=f"^{reason}: '{key}' at step 2") as info:
        spec().check(with_value(valid(), key, value, col=col))
    assert info.value.reason == reason


@pytest.mark.parametrize("action", [[1.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, -1.0, 0.0]])
def test_discrete_actions_must_be_one_hot(action):
    arrays = valid(discrete=True)
    arrays["action"][4] = action
    with pytest.raises(StepError, match="^action: 'action' at step 4"):
        spec(discrete=True).check(arrays)


def test_episode_structure_within_a_chunk():
    terminal = valid()
    terminal["is_terminal"][3] = True  # without is_last
    with pytest.raises(StepError, match="^episode: 'is_terminal' at step 3"):
        spec().check(terminal)
    early = valid()
    early["is_last"][2] = True  # a chunk ends at its episode's end
    with pytest.raises(StepError, match="^episode: 'is_last' before"):
        spec().check(early)
    ended = valid(last=True)
    ended["is_terminal"][-1] = True
    spec().check(ended)


def test_bad_rows_marks_exactly_the_bad_rows_of_a_batch():
    batch = {k: np.stack([v] * 3) for k, v in valid(9).items()}
    batch["stoch"][0, 4, 1] = 9
    batch["reward"][2, 7] = np.nan
    batch["is_last"].view(np.uint8)[1, 0] = 5
    expected = np.zeros((3, 9), bool)
    expected[0, 4] = expected[2, 7] = expected[1, 0] = True
    assert np.array_equal(spec().bad_rows(batch, lead=2), expected)


def experience(seq, arrays, *, actor="a", session=1, episode=0):
    return Experience(actor=actor, episode=episode, seq=seq, policy=0, arrays=arrays, session=session)


def test_tracker_refuses_a_chunk_that_breaks_the_episode_structure():
    tracker = SequenceTracker()
    assert tracker.accept(experience(0, valid(last=True)))
    assert not tracker.accept(experience(1, valid(first=False), episode=1))  # after an episode's end: must start it
    assert tracker.reason == "episode"
    assert tracker.accept(experience(2, valid(first=True), episode=1))
    assert not tracker.accept(experience(3, valid(first=False), episode=2))  # a new episode number without is_first
    assert not tracker.accept(experience(4, valid(first=True), episode=0))  # episode numbers never go back
    assert tracker.accept(experience(5, valid(first=False), episode=1))  # continues episode 1
    entry = tracker.actors["a"]
    assert entry["refused"] == {"episode": 3} and entry["messages"] == 3 and entry["missing"] == 0  # refused ones arrived


def test_forged_accounting_fields_without_curve_cannot_lock_out_an_actor():
    tracker = SequenceTracker(window=16, max_actors=8)
    arrays = valid(first=False)
    for seq in range(3):
        assert tracker.accept(experience(seq, arrays))
    assert tracker.accept(experience(999_999, arrays))  # forged: a reset, not 999,996 missing
    assert tracker.accept(experience(2**62, arrays, session=2**62))  # forged session near 2**62
    assert tracker.accept(experience(3, arrays))  # the real actor's next message: not stale, not a duplicate
    entry = tracker.actors["a"]
    assert entry["missing"] == 0 and entry["messages"] == 6  # each forged jump, and each way back, a reset
    assert entry["resets"] == 4
    for i in range(100):  # an id flood: each new id evicts the idlest entry
        assert tracker.accept(experience(0, arrays, actor=f"flood-{i}"))
    assert len(tracker.actors) == 8 and tracker.retired["evicted"] == 93
    for seq in range(4, 10):  # the real actor, evicted meanwhile, is admitted again; none of its messages is refused
        assert tracker.accept(experience(seq, arrays)), tracker.reason
    assert tracker.actors["a"]["missing"] <= 16
    strict = SequenceTracker()  # with CURVE the numbering is strict: the same forgery would have made a gap
    strict.accept(experience(0, arrays))
    strict.accept(experience(999_999, arrays))
    assert strict.actors["a"]["missing"] == 999_998


def test_receiver_refuses_by_reason_per_actor_and_keeps_counting_arrivals():
    ctx = zmq.Context()
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", spec=spec(), context=ctx)
    sender = ExperienceSender(receiver.address, "a", context=ctx, session=1)
    good = valid(first=True)
    sender.send(good, episode=0, policy=0)
    for key, value, col, _ in BAD_VALUES:
        sender.send(with_value(valid(first=False), key, value, col=col), episode=0, policy=0)
    sender.send(valid(first=False), episode=0, policy=0)
    got = []
    assert wait_for(lambda: (got.extend(receiver.receive(timeout=0.05)), len(got) == 2)[1], timeout=10)
    refused = receiver.stats()["refused"]
    assert sum(refused.values()) == len(BAD_VALUES) and set(refused) == {r for *_, r in BAD_VALUES}
    entry = receiver.stats()["actors"]["a"]
    assert entry["messages"] == 2 and entry["missing"] == 0 and sum(entry["refused"].values()) == len(BAD_VALUES)
    sender.close(), receiver.close(), ctx.term()


# ------------------------------------------------------------------ learner
def learner_cfg(tmp_path, *extra):
    return compose(
        [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", "eval_episodes=0", *extra]
    )


def run_in_thread(learner):
    thread = threading.Thread(target=lambda: learner.run(handle_signals=False), daemon=True)
    thread.start()
    return thread


def test_learner_replay_is_bit_identical_after_bad_messages(tmp_path):
    """Every kind of bad value, then a good chunk: replay holds exactly the good chunks, byte for byte."""
    from reverie.realtime.learner import Learner

    learner = Learner(learner_cfg(tmp_path, "steps=100000000", "train_start=1000000", "realtime.publish_every=100000"))
    thread = run_in_thread(learner)
    try:
        schema = learner.receiver.schema
        rng = np.random.default_rng(0)

        def good(first):
            arrays = chunk_of(schema, 8, first=first)
            arrays["target"] = rng.normal(size=arrays["target"].shape).astype(np.float32)
            arrays["action"] = rng.uniform(-1, 1, arrays["action"].shape).astype(np.float32)
            arrays["stoch"] = rng.integers(0, 4, arrays["stoch"].shape).astype(np.uint8)
            return arrays

        ctx = zmq.Context()
        sender = ExperienceSender(learner.addresses.experience, "a", context=ctx, session=1)
        first = good(True)
        sender.send(first, episode=0, policy=0)
        assert wait_for(lambda: learner.replay.total == 8, timeout=20)
        before = {k: v[:8].copy() for k, v in learner.replay.data.items()}
        bad_kinds = [
            ("stoch", 4, 0),  # index ≥ classes (tiny: 4)
            ("is_first", 2, None),
            ("action", 1e38, 0),
            ("action", 1.0001, 0),
            ("reward", 1e37, None),
        ]
        for key, value, col in bad_kinds:
            sender.send(with_value(good(False), key, value, col=col), episode=0, policy=0)
        inconsistent = good(False)
        sender.send(inconsistent, episode=1, policy=0)  # a new episode that does not start with is_first
        wrong_index = {**good(False), "stoch": np.full((8, 4), -1, np.int64)}  # a negative index needs another dtype
        sender.send(wrong_index, episode=0, policy=0)
        after = good(False)
        sender.send(after, episode=0, policy=0)
        assert wait_for(lambda: learner.replay.total == 16, timeout=20)
        assert wait_for(lambda: sum(learner.receiver.refused.values()) == 7, timeout=20), learner.receiver.refused
        assert dict(learner.receiver.refused) == {"latent": 1, "bool": 1, "action": 2, "magnitude": 1, "episode": 1, "dtype": 1}
        for key, value in before.items():
            assert learner.replay.data[key][:8].tobytes() == value.tobytes(), key
        after["is_first"][0] = True  # the learner starts a sequence at the hole the refused chunks left
        for key, value in after.items():
            assert learner.replay.data[key][8:16].tobytes() == value.tobytes(), key
        sender.close()
        ctx.term()
    finally:
        learner.stop()
        thread.join(60)


def poisoned_run(tmp_path):
    """A finished tiny run whose saved replay then got invalid rows on disk; returns (cfg overrides, bad step indices)."""
    from reverie.agent.train import train

    overrides = [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", "eval_episodes=0", "checkpoint_every=50"]
    train(compose([*overrides, "steps=120"]))
    directory = tmp_path / "run" / "replay"
    saved = Manifest.read(directory).latest
    with np.load(directory / saved.files["latents"]) as f:
        latents = {k: f[k].copy() for k in f.files}
    latents["stoch"][5, 2] = 200  # what killed the learner in the issue: an index beyond the classes
    np.savez(directory / saved.files["latents"], **latents)
    with np.load(directory / saved.files["partial"]) as f:
        partial = {k: f[k].copy() for k in f.files}
    partial["is_last"].view(np.uint8)[3] = 2
    np.savez(directory / saved.files["partial"], **partial)
    total = saved.total
    return overrides, sorted([5, total - len(partial["is_last"]) + 3])


def test_replay_check_reports_exactly_the_poisoned_rows_and_repair_quarantines_them(tmp_path, capsys):
    from reverie.cli.main import main

    _, bad = poisoned_run(tmp_path)
    logdir = str(tmp_path / "run")
    # As if a crash came between the replay save and the checkpoint: a newer, clean replay generation that the
    # checkpoint does not name. The check must look at the one a resume loads, the checkpoint's.
    directory = tmp_path / "run" / "replay"
    named = Manifest.read(directory).latest.number
    newer = Replay(capacity=1_000_000, seq_len=9, directory=directory)
    newer.load()
    newer.data["stoch"][bad[0], 2], newer.data["is_last"][bad[1]] = 0, False
    newer.save()
    assert main(["replay", "check", logdir]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == bad and report["invalid"] == 2
    assert report["by_reason"] == {"latent stoch": 1, "bool is_last": 1}
    assert main(["replay", "check", logdir, "--repair"]) == 0
    repaired = json.loads(capsys.readouterr().out)
    assert repaired["repaired"] == 2 and repaired["quarantined"] == 2 and os.path.isdir(repaired["backup"])
    assert os.path.exists(os.path.join(repaired["backup"], "replay.json"))
    assert os.path.exists(os.path.join(repaired["backup"], f"quarantine-{named}.npz"))
    again = json.loads((capsys.readouterr(), main(["replay", "check", logdir]), capsys.readouterr().out)[2])
    assert again["quarantined"] == 2  # the rows are still there, and stay quarantined
    resumed = Replay(capacity=1_000_000, seq_len=9, directory=directory)
    assert resumed.load(named) and resumed.quarantined == 2


def test_learner_starts_on_a_poisoned_replay_quarantines_and_trains(tmp_path, capfd):
    from reverie.realtime.learner import Learner

    overrides, bad = poisoned_run(tmp_path)
    cfg = compose([*overrides, f"realtime.ipc_dir={tmp_path / 'ipc'}", "steps=100000000"])
    learner = Learner(cfg)
    assert "2 replay rows" in capfd.readouterr().err
    assert learner.replay.quarantined == 2
    updates = learner.counters["updates"]
    for _ in range(20):  # each sampled batch avoids the quarantined rows
        batch, _ = learner.sample_batch()
        assert not learner.spec.bad_rows(batch, lead=2).any()
    learner.counters["train_credit"] += 3
    for _ in range(3):
        learner.update()
    assert learner.counters["updates"] == updates + 3 and learner.counters["dropped_batches"] == 0
    learner.close()


def test_a_bad_batch_is_dropped_counted_and_its_rows_quarantined(tmp_path):
    from reverie.agent.train import Trainer

    trainer = Trainer(compose([*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", "eval_episodes=0", "steps=60"]))
    trainer.run()
    replay = trainer.replay
    replay.data["stoch"][: len(replay), 0] = 7  # every row poisoned but a window the sampler must find
    replay.data["stoch"][20:40, 0] = 0
    trainer.counters["train_credit"] += 1
    metrics = trainer.update()
    assert all(np.isfinite(v) for v in metrics.values())
    assert trainer.counters["dropped_batches"] >= 1 and replay.quarantined > 0
    for _ in range(10):  # training rewrote the latents of the rows it used; the rest stay out of every batch
        batch, _ = replay.sample(8)
        assert not trainer.spec.bad_rows(batch, lead=2).any()


# -------------------------------------------------------------- smaller findings
def test_plaintext_tcp_needs_insecure(capsys):
    from reverie.realtime.endpoints import check_plaintext

    with pytest.raises(ValueError, match="realtime.insecure=true"):
        check_plaintext(compose(["realtime.transport=tcp"]))
    check_plaintext(compose(["realtime.transport=tcp", "realtime.insecure=true"]))
    assert "WARNING" in capsys.readouterr().err
    check_plaintext(compose(["realtime.transport=ipc"]))
    check_plaintext(compose(["realtime.transport=tcp", "realtime.curve=true"]))


def test_status_over_curve_with_the_readmes_key_names(tmp_path, capsys):
    from reverie.cli.main import main
    from reverie.realtime.learner import Learner

    assert main(["keys", str(tmp_path / "keys"), "learner", "actor0"]) == 0  # as the README says: no key called "actor"
    cfg = learner_cfg(tmp_path, "realtime.transport=tcp", "realtime.port=0", "realtime.curve=true", f"realtime.keys={tmp_path / 'keys'}")
    capsys.readouterr()
    with pytest.raises(ValueError, match="insecure"):  # tcp without curve refuses; with curve it needs no flag
        Learner(compose([*TINY, "env=fake/vector", f"logdir={tmp_path / 'other'}", "realtime.transport=tcp"]))
    ctx = zmq.Context()
    port = ctx.socket(zmq.REP)
    free = port.bind_to_random_port("tcp://127.0.0.1")
    port.close(0)
    ctx.term()
    cfg = learner_cfg(
        tmp_path, "realtime.transport=tcp", f"realtime.port={free - 2}", "realtime.curve=true", f"realtime.keys={tmp_path / 'keys'}"
    )
    learner = Learner(cfg)
    try:
        learner._refresh_status()
        learner._status_server.start()
        code = main(["status", f"address=tcp://127.0.0.1:{free}", "realtime.curve=true", f"realtime.keys={tmp_path / 'keys'}"])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert json.loads(out.out)["role"] == "learner"
    finally:
        learner.close()


def test_config_is_written_only_once_the_run_is_built(tmp_path):
    from reverie.agent.train import Trainer

    bad = compose([*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", "+env.options.no_such_option=1"])
    with pytest.raises(TypeError):
        Trainer(bad)
    assert not (tmp_path / "run" / "config.yaml").exists()
    Trainer(compose([*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}"]))  # the corrected command is not refused
    assert (tmp_path / "run" / "config.yaml").exists()


def test_a_moved_run_resumes(tmp_path):
    from reverie.agent.train import Trainer, train

    common = [*TINY, "env=fake/vector", "eval_episodes=0", "checkpoint_every=40"]
    train(compose([*common, f"logdir={tmp_path / 'a'}", "steps=80"]))
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = Trainer(compose([*common, f"logdir={tmp_path / 'b'}", "steps=120"]))
    assert moved.resumed and moved.counters["agent_steps"] >= 40


def test_a_killed_actors_scratch_folder_is_removed_at_the_next_start(tmp_path):
    from reverie.realtime.actor import scratch_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"reverie-actor-{dead.pid}-abc"
    left.mkdir()
    (left / "received.onnx").write_bytes(b"x" * 100)
    alive = tmp_path / f"reverie-actor-{os.getpid()}-def"  # a running actor's folder stays
    alive.mkdir()
    fresh = scratch_dir(tmp_path)
    assert not left.exists() and alive.exists() and fresh.is_dir() and fresh.name.startswith(f"reverie-actor-{os.getpid()}-")


def test_a_corrupted_model_with_a_matching_hash_gives_one_clear_line(tmp_path, capfd):
    import hashlib

    from conftest import make_agent

    from reverie import envs
    from reverie.cli.main import main
    from reverie.realtime.export import export_policy

    env = envs.make("fake/vector")
    path = tmp_path / "policy.onnx"
    export_policy(make_agent(env), path, obs_space=env.obs_space, split=False)  # one file: its hash is the file's
    model = bytearray(path.read_bytes())
    model[model.find(b"MatMul") + 1] = 0x90  # a flipped byte in an operator's name
    path.write_bytes(bytes(model))
    sidecar = json.loads(path.with_suffix(".onnx.json").read_text())
    sidecar["sha256"] = hashlib.sha256(bytes(model)).hexdigest()  # the hash matches: only the content is wrong
    path.with_suffix(".onnx.json").write_text(json.dumps(sidecar))
    capfd.readouterr()
    assert main(["eval", str(path), "episodes=1"]) == 2
    out = capfd.readouterr()
    assert out.out == ""  # no onnxruntime fallback banner
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "corrupted" in lines[0] and "utf-8" not in lines[0], lines


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(1)


def test_mutation_fuzz_against_a_live_learner():
    """5,000 mutated messages (bit flips, truncations, edited headers, values outside their meaning) between an honest
    actor's stream: every message is refused or stored valid, the learner keeps training, replay holds no invalid row."""
    out = subprocess.run(
        [sys.executable, "bench/fuzz_experience.py", "--messages", "5000", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 5500 and summary["accounted"], summary
    assert summary["learner_alive_after_fuzz"] and summary["learner_exit_code"] == 0, summary
    assert summary["updates_during_fuzz"] > 0 and summary["replay_invalid_rows"] == 0 and summary["replay_rows"] > 0, summary
    assert summary["honest_messages_accepted"] >= 0.95 * summary["honest_messages_sent"], summary
    assert summary["refused"] > 2500, summary  # most mutations are refused; those accepted were still valid


def test_tracker_state_of_an_older_checkpoint_gets_its_own_refusal_counts():
    old = {"a": {"session": 1, "next": 3, "messages": 3, "steps": 12, "missing": 0, "duplicates": 0, "stale": 0, "sessions": 1}}
    tracker = SequenceTracker()
    tracker.load_state({**old, "b": dict(old["a"])})
    assert tracker.accept(experience(3, valid(first=False), actor="a"))
    tracker.accept(experience(3, valid(first=False), actor="a"))  # a duplicate of a
    assert tracker.actors["a"]["refused"] == {"duplicate": 1} and tracker.actors["b"]["refused"] == {}
