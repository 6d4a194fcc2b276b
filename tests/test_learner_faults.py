"""The learner under faults: malformed messages, a failing export, and exits that must (or must not) checkpoint."""

import json
import threading

import msgpack
import pytest
import torch
import zmq
from conftest import TINY, chunk_of, make_agent, wait_for

from reverie import envs
from reverie.agent.replay import Manifest
from reverie.cli.config import compose
from reverie.realtime.channels import ExperienceSender
from reverie.realtime.export import export_policy
from reverie.realtime.protocol import Experience, encode_experience


def tiny_cfg(tmp_path, *extra):
    return compose(
        [*TINY, "env=fake/vector", f"logdir={tmp_path / 'run'}", f"realtime.ipc_dir={tmp_path / 'ipc'}", "eval_episodes=0", *extra]
    )


def start(learner, stop_after):
    """Runs the learner on a thread (stopped at the end of the test); the returned dict gets ``error`` if ``run`` raised."""
    outcome = {}

    def target():
        try:
            outcome["result"] = learner.run(handle_signals=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    stop_after((learner, thread))
    return thread, outcome


@pytest.fixture
def stop_after():
    """Stops the learners a test started, even when it failed half-way."""
    started = []
    yield started.append
    for learner, thread in started:
        learner.stop()
        thread.join(60)


def saved_counters(tmp_path):
    return torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["counters"]


def bad_messages(schema):
    """Malformed experience messages of the kinds that once raised past the decoder."""
    frames = [bytes(f) for f in encode_experience(actor="evil", episode=0, seq=0, policy=0, arrays=chunk_of(schema, 2))]
    header = msgpack.unpackb(frames[0])
    return [
        [msgpack.packb(dict(header, dtypes=[[d] for d in header["dtypes"]])), *frames[1:]],  # lists for dtype names
        [msgpack.packb(dict(header, shapes=[[1, 2**31, 2**31, 4]] * len(frames[1:]))), *(b"" for _ in frames[1:])],  # 2**64 bytes
        [msgpack.packb(dict(header, shapes={"x": 1})), *frames[1:]],
        [b"\xc1 not msgpack", b"x"],
    ]


def test_bad_messages_are_counted_and_skipped_and_stop_saves_what_arrived(tmp_path, stop_after):
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path, "steps=100000000", "realtime.publish_every=100000"))
    schema = learner.receiver.schema
    thread, outcome = start(learner, stop_after)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(learner.addresses.experience)
    sender = ExperienceSender(learner.addresses.experience, "a", context=ctx, session=1)
    bad = bad_messages(schema)
    for i in range(3):  # bad and good interleaved: every good one still gets in
        for frames in bad:
            raw.send_multipart(frames)
        sender.send(chunk_of(schema, 10, first=i == 0), episode=0, policy=0)
    assert wait_for(lambda: learner.receiver.tracker.actors.get("a", {}).get("messages") == 3, timeout=20.0)
    assert wait_for(lambda: sum(learner.receiver.refused.values()) == 3 * len(bad), timeout=20.0)
    assert thread.is_alive() and {"dtype", "shape", "schema", "msgpack"} == set(learner.receiver.refused)
    learner.stop()
    thread.join(60)
    assert not thread.is_alive() and "error" not in outcome
    counters = saved_counters(tmp_path)  # the stop checkpointed everything that arrived
    assert counters["agent_steps"] == 30 and counters["tracker"]["a"]["messages"] == 3
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert sum(status["refused"].values()) == 3 * len(bad)
    raw.close(0), sender.close(), ctx.term()


def test_a_failing_export_is_logged_counted_and_training_goes_on(tmp_path, stop_after, monkeypatch, capsys):
    import reverie.realtime.export as export
    from reverie.realtime.learner import Learner

    real, calls = export.export_policy, []

    def flaky(agent, path, **kwargs):  # the first publication works, the following ones fail (as NaN weights would)
        calls.append(path)
        if path.parent.name == "published" and len(calls) > 1:
            raise RuntimeError(f"ONNX export of {path}: output action is not finite in torch")
        return real(agent, path, **kwargs)

    monkeypatch.setattr(export, "export_policy", flaky)
    learner = Learner(tiny_cfg(tmp_path, "steps=100000000", "realtime.publish_every=2"))
    learner.ingest(Experience("a", 0, 0, 0, chunk_of(learner.receiver.schema, 40, first=True)))  # owes ~40 updates
    thread, outcome = start(learner, stop_after)
    published = tmp_path / "run" / "published" / "policy.onnx"
    assert wait_for(lambda: learner.counters["publish_failures"] >= 2 and learner.counters["updates"] >= 5, timeout=20.0)
    assert thread.is_alive()
    # The actors keep version 1: the publisher still holds it and the files on disk are untouched.
    assert learner.counters["version"] == learner.publisher.version == 1
    assert json.loads(published.with_name("policy.onnx.json").read_text())["version"] == 1
    assert learner.status()["publish_failures"] >= 2 and "not finite" in learner.status()["last_publish_error"]
    learner.stop()
    thread.join(60)
    assert "error" not in outcome and outcome["result"]["version"] == 1
    assert saved_counters(tmp_path)["publish_failures"] >= 2
    assert "publishing policy version 2 failed" in capsys.readouterr().err


def test_an_exception_outside_a_state_change_still_checkpoints(tmp_path, stop_after):
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path, "steps=100000000", "realtime.publish_every=100000"))
    schema = learner.receiver.schema
    checkpoint = learner._maybe_checkpoint

    def crash_once_data_is_in():
        if learner.counters["agent_steps"] >= 30:
            raise RuntimeError("disk on fire")
        checkpoint()

    learner._maybe_checkpoint = crash_once_data_is_in
    thread, outcome = start(learner, stop_after)
    ctx = zmq.Context()
    sender = ExperienceSender(learner.addresses.experience, "a", context=ctx, session=1)
    for i in range(3):
        sender.send(chunk_of(schema, 10, first=i == 0), episode=0, policy=0)
    thread.join(60)
    assert isinstance(outcome.get("error"), RuntimeError)  # the error still surfaces …
    counters = saved_counters(tmp_path)  # … after the finally saved what had arrived
    assert counters["agent_steps"] == 30 and counters["tracker"]["a"]["messages"] == 3
    assert Manifest.read(tmp_path / "run" / "replay").latest.total == 30
    sender.close(), ctx.term()


def test_a_learner_stopped_before_any_experience_arrived_restarts(tmp_path, stop_after):
    """Its checkpoint was saved with an empty replay (no replay generation): the restart resumes it, replay empty."""
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path, "steps=100000000"))
    thread, outcome = start(learner, stop_after)
    assert wait_for(lambda: (tmp_path / "run" / "status.json").exists(), 30)  # running
    learner.stop()
    thread.join(60)
    assert "error" not in outcome and saved_counters(tmp_path)["agent_steps"] == 0
    again = Learner(tiny_cfg(tmp_path, "steps=100000000"))
    try:
        assert again.book.resumed and again.replay.total == 0
    finally:
        again.close()


def test_an_exception_in_the_middle_of_an_update_does_not_checkpoint_a_half_updated_state(tmp_path, stop_after, capsys):
    from reverie.realtime.learner import Learner

    learner = Learner(tiny_cfg(tmp_path, "steps=100000000", "realtime.publish_every=100000"))
    learner.ingest(Experience("a", 0, 0, 0, chunk_of(learner.receiver.schema, 40, first=True)))

    def broken_update():
        raise RuntimeError("CUDA error: an illegal memory access")

    learner.update = broken_update
    thread, outcome = start(learner, stop_after)
    thread.join(60)
    assert isinstance(outcome.get("error"), RuntimeError)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert "half-updated" in capsys.readouterr().err


def test_an_export_of_nan_weights_fails_and_leaves_the_previous_files(tmp_path):
    env = envs.make("fake/vector")
    agent = make_agent(env)
    path = tmp_path / "p.onnx"
    export_policy(agent, path, obs_space=env.obs_space, metadata={"version": 1})
    model, sidecar = path.read_bytes(), path.with_name("p.onnx.json").read_text()
    with torch.no_grad():
        for param in agent.parameters():
            param.fill_(float("nan"))
    with pytest.raises(RuntimeError, match="not finite"):
        export_policy(agent, path, obs_space=env.obs_space, metadata={"version": 2})
    assert path.read_bytes() == model and path.with_name("p.onnx.json").read_text() == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.advance.onnx", "p.onnx", "p.onnx.json"]  # no temporaries left
