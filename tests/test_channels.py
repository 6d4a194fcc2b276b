"""ZeroMQ channels on loopback: experience accounting, malformed floods, weights, CURVE."""

import json
import time

import numpy as np
import pytest
import zmq
from conftest import copy_robot_model, wait_for

from reverie.realtime.channels import ExperienceReceiver, ExperienceSender, WeightPublisher, WeightSubscriber
from reverie.realtime.runtime import PolicyRuntime
from reverie.realtime.security import CurveServer, generate_keys, protect_client

# Robot side: runs in the robot-only install too (make test-robot).
pytestmark = pytest.mark.robot

SCHEMA = {"position": ("float32", (5,)), "image": ("uint8", (64, 64, 3)), "reward": ("float32", ()), "is_last": ("bool", ())}


def chunk(T=4):
    rng = np.random.default_rng(0)
    return {
        "position": rng.normal(size=(T, 5)).astype(np.float32),
        "image": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
        "reward": np.ones(T, np.float32),
        "is_last": np.zeros(T, bool),
    }


def collect(receiver, count, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive(timeout=0.05)
    return got


def test_round_trip_and_gap_accounting():
    ctx = zmq.Context()
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", schema=SCHEMA, context=ctx)
    sender = ExperienceSender(receiver.address, "actor-1", context=ctx)
    for i in range(5):
        if i == 3:
            sender.seq += 2  # two messages lost on the way
        sender.send(chunk(), episode=0, policy=1)
    got = collect(receiver, 5)
    assert len(got) == 5 and np.array_equal(got[0].arrays["image"], chunk()["image"])
    stats = receiver.stats()["actors"]["actor-1"]
    assert stats["messages"] == 5 and stats["steps"] == 20 and stats["missing"] == 2
    sender.close(), receiver.close(), ctx.term()


def test_actor_tables_stay_bounded_and_admit_new_actors():
    """More distinct actor ids than max_actors: the idlest entry is evicted (its counts retired), the new id is admitted."""
    from reverie.realtime.protocol import encode_status

    ctx = zmq.Context()
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", schema=SCHEMA, context=ctx, max_actors=2)
    senders = [ExperienceSender(receiver.address, f"actor-{i}", context=ctx) for i in range(3)]
    for sender in senders:
        sender.send(chunk(), episode=0, policy=1)
        assert len(collect(receiver, 1)) == 1  # in order, so actor-0 is the idlest when actor-2 comes
    assert list(receiver.tracker.actors) == ["actor-1", "actor-2"] and not receiver.refused
    assert receiver.stats()["retired"]["messages"] == 1 and receiver.stats()["retired"]["evicted"] == 1
    status = ctx.socket(zmq.PUSH)
    status.connect(receiver.address)
    for i in range(5):
        status.send_multipart(encode_status(actor=f"status-{i}", stats={"ticks": i}))
    assert wait_for(lambda: (receiver.receive(timeout=0.05), "status-4" in receiver.actor_status)[1])
    assert list(receiver.actor_status) == ["status-3", "status-4"]
    for sender in senders:
        sender.close()
    status.close(0), receiver.close(), ctx.term()


def test_malformed_flood_is_refused_counted_and_the_receiver_stays_up():
    ctx = zmq.Context()
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", schema=SCHEMA, context=ctx)
    raw = ctx.socket(zmq.PUSH)
    raw.connect(receiver.address)
    rng = np.random.default_rng(0)
    for _ in range(1000):
        frames = [rng.bytes(int(rng.integers(1, 64))) for _ in range(int(rng.integers(1, 6)))]
        raw.send_multipart(frames)
    sender = ExperienceSender(receiver.address, "good", context=ctx)
    sender.send(chunk(), episode=0, policy=0)
    got, deadline = [], time.monotonic() + 10
    while (sum(receiver.refused.values()) < 1000 or not got) and time.monotonic() < deadline:
        got += receiver.receive(timeout=0.05)
    assert sum(receiver.refused.values()) == 1000
    assert len(got) == 1 and got[0].actor == "good"
    raw.close(0), sender.close(), receiver.close(), ctx.term()


def test_learner_away_buffers_then_drops_oldest_with_a_count(tmp_path):
    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/learner"  # nobody listens yet
    sender = ExperienceSender(address, "a", queue_size=5, context=ctx)
    for _ in range(20):
        sender.send(chunk(1), episode=0, policy=0)
    assert wait_for(lambda: sender.depth == 5)
    assert (sender.sent, sender.dropped) == (0, 15)  # nothing left while the learner was away
    receiver = ExperienceReceiver(address, schema=SCHEMA, context=ctx)
    got = []
    assert wait_for(lambda: (got.extend(receiver.receive(timeout=0.02)), len(got) >= 5)[1])
    assert sender.flush() and sender.sent == len(got) == 5  # sent = received; + 15 counted drops = 20
    assert [e.seq for e in got] == [15, 16, 17, 18, 19]  # the oldest were dropped
    assert receiver.stats()["actors"]["a"]["missing"] == 15
    sender.close(), receiver.close(), ctx.term()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    """The committed tiny fake/vector policy, as ``p.onnx`` (robot side: no exporter here)."""
    return copy_robot_model("vector_fused", tmp_path_factory.mktemp("w") / "p.onnx")


def running_subscriber(policy_file):
    """A publisher and a subscriber that has accepted version 1 of ``policy_file``."""
    ctx = zmq.Context()
    publisher = WeightPublisher("tcp://127.0.0.1:*", context=ctx)
    received = []
    subscriber = WeightSubscriber(
        publisher.address, lambda v, rt: received.append(v), build=lambda b, s: PolicyRuntime(None, sidecar=s, model_bytes=b), context=ctx
    )
    assert wait_for(lambda: (publisher.publish(1, policy_file), bool(received))[1])
    return ctx, publisher, subscriber, received


def test_weights_accepted_refused_and_old_policy_kept(policy_file, tmp_path):
    ctx, publisher, subscriber, received = running_subscriber(policy_file)
    # Corrupted bytes: the header hash no longer matches.
    data, side = policy_file.read_bytes(), json.loads(policy_file.with_name("p.onnx.json").read_text())
    from reverie.realtime.protocol import encode_weights

    frames = encode_weights(version=2, onnx_bytes=data, sidecar=side)
    frames[1] = data[:-10] + b"0123456789"
    # PUB drops messages for a busy subscriber (it gets only the newest), so
    # each bad message is resent until it has been refused.
    assert wait_for(lambda: (publisher._socket.send_multipart(frames), subscriber.refused["hash"] >= 1)[1])
    # A sidecar whose signature does not match the model (wrong input shape), correctly hashed.
    bad = dict(side)
    bad["inputs"] = [dict(side["inputs"][0], shape=[1, 99])] + side["inputs"][1:]
    bad_frames = encode_weights(version=3, onnx_bytes=data, sidecar=bad)
    assert wait_for(lambda: (publisher._socket.send_multipart(bad_frames), subscriber.refused["model"] >= 1)[1])
    assert received == [1] and subscriber.version == 1  # the old policy stays
    # The learner republishes its newest policy: a refused model is not built again.
    repeats = subscriber.repeats
    assert wait_for(lambda: (publisher._socket.send_multipart(bad_frames), subscriber.repeats >= repeats + 3)[1])
    assert subscriber.refused["model"] == 1
    subscriber.close(), publisher.close(), ctx.term()


def test_curve_wrong_key_gets_nothing_through(tmp_path):
    keys = generate_keys(tmp_path / "keys", ("learner", "actor"))
    generate_keys(tmp_path / "intruder", ("actor",))
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "actor.key").write_bytes(keys["actor"].read_bytes())
    ctx = zmq.Context()
    server = CurveServer(ctx, tmp_path / "keys" / "learner.key_secret", allowed)
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", schema=SCHEMA, context=ctx, secure=server.protect)
    good = ExperienceSender(
        receiver.address, "good", context=ctx, secure=lambda s: protect_client(s, tmp_path / "keys" / "actor.key_secret", keys["learner"])
    )
    evil = ExperienceSender(
        receiver.address,
        "evil",
        context=ctx,
        secure=lambda s: protect_client(s, tmp_path / "intruder" / "actor.key_secret", keys["learner"]),
    )
    plain = ExperienceSender(receiver.address, "plain", context=ctx)
    for s in (good, evil, plain):
        s.send(chunk(), episode=0, policy=0)
    got = collect(receiver, 1, timeout=3)
    got += collect(receiver, 5, timeout=1)
    assert [e.actor for e in got] == ["good"]
    for s in (good, evil, plain):
        s.close()
    receiver.close(), server.stop(), ctx.term()


def test_cli_keys(tmp_path, capsys):
    from reverie.cli.main import main

    assert main(["keys", str(tmp_path / "k"), "learner", "robot1"]) == 0
    assert (tmp_path / "k" / "robot1.key").exists() and (tmp_path / "k" / "robot1.key_secret").stat().st_mode & 0o077 == 0


def test_thousand_malformed_weight_messages_are_refused_and_the_old_policy_stays(policy_file):
    import msgpack

    ctx, publisher, subscriber, received = running_subscriber(policy_file)
    data = policy_file.read_bytes()
    side = json.loads(policy_file.with_name("p.onnx.json").read_text())
    rng = np.random.default_rng(0)
    from reverie.realtime.protocol import encode_weights

    sent = 0
    for i in range(1000):
        kind = i % 4
        if kind == 0:  # random frames
            frames = [rng.bytes(int(rng.integers(0, 300))) for _ in range(int(rng.integers(1, 4)))]
        elif kind == 1:  # garbage msgpack header with a model
            frames = [msgpack.packb({"v": 1, "kind": "weights", "version": "x"}), data[:100]]
        elif kind == 2:  # truncated model: hash mismatch
            frames = encode_weights(version=10 + i, onnx_bytes=data, sidecar=side)
            frames[1] = frames[1][: int(rng.integers(0, len(data)))]
        else:  # correctly hashed bytes that are not an ONNX model
            junk = rng.bytes(1000)
            import hashlib

            frames = encode_weights(version=10 + i, onnx_bytes=junk, sidecar=dict(side, sha256=hashlib.sha256(junk).hexdigest()))
        # PUB drops for a busy subscriber: send each until it is counted.
        before = sum(subscriber.refused.values())
        assert wait_for(
            lambda f=frames, b=before: (publisher._socket.send_multipart(f), sum(subscriber.refused.values()) > b)[1], timeout=5
        )
        sent += 1
    assert sent == 1000 and received == [1] and subscriber.version == 1 and subscriber._thread.is_alive()
    assert {"msgpack", "schema", "hash", "model"} <= set(subscriber.refused)
    subscriber.close(), publisher.close(), ctx.term()


def test_type_confused_and_overflowing_headers_are_counted_and_the_receiver_stays_up(monkeypatch):
    import msgpack

    from reverie.realtime import channels
    from reverie.realtime.protocol import encode_experience

    ctx = zmq.Context()
    receiver = ExperienceReceiver("tcp://127.0.0.1:*", context=ctx)  # no schema: the decode goes all the way to the sizes
    raw = ctx.socket(zmq.PUSH)
    raw.connect(receiver.address)
    frames = [bytes(f) for f in encode_experience(actor="x", episode=0, seq=0, policy=0, arrays={"x": np.zeros((1, 4), np.uint8)})]
    header = msgpack.unpackb(frames[0])
    raw.send_multipart([msgpack.packb(dict(header, dtypes=[["float32"]])), frames[1]])  # once a TypeError
    raw.send_multipart([msgpack.packb(dict(header, shapes={"x": [1, 4]})), frames[1]])
    raw.send_multipart([msgpack.packb(dict(header, shapes=[[1, 2**31, 2**31, 4]])), b""])  # 2**64 bytes: once read as 0
    assert wait_for(lambda: (receiver.receive(timeout=0.05), sum(receiver.refused.values()) == 3)[1])
    assert receiver.refused == {"dtype": 1, "size": 1, "schema": 1} and "2147483648" in receiver.last_error
    # Whatever else a decode might raise is refused and counted too; the next message still arrives.
    real = channels.decode_experience
    monkeypatch.setattr(channels, "decode_experience", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unforeseen")))
    raw.send_multipart(frames)
    assert wait_for(lambda: (receiver.receive(timeout=0.05), receiver.refused["error"] == 1)[1])
    assert "RuntimeError: unforeseen" in receiver.last_error
    monkeypatch.setattr(channels, "decode_experience", real)
    # The refused messages with a sound header arrived as x's message 0 (not missing): the next one is 1.
    raw.send_multipart(encode_experience(actor="x", episode=0, seq=1, policy=0, arrays={"x": np.zeros((1, 4), np.uint8)}))
    assert [e.actor for e in collect(receiver, 1)] == ["x"] and sum(receiver.refused.values()) == 4
    assert receiver.stats()["actors"]["x"]["missing"] == 0
    raw.close(0), receiver.close(), ctx.term()


def test_oversized_weights_are_cut_off_and_the_subscriber_reconnects(policy_file):
    from reverie.realtime.protocol import Limits

    size = len(policy_file.read_bytes())
    ctx = zmq.Context()
    publisher = WeightPublisher("tcp://127.0.0.1:*", context=ctx)
    received = []
    limits = Limits(max_message_bytes=size + 1000)
    subscriber = WeightSubscriber(
        publisher.address,
        lambda v, rt: received.append(v),
        build=lambda b, s: PolicyRuntime(None, sidecar=s, model_bytes=b),
        context=ctx,
        limits=limits,
    )
    assert subscriber._socket.getsockopt(zmq.MAXMSGSIZE) == size + 1000 + limits.max_header_bytes
    assert wait_for(lambda: (publisher.publish(1, policy_file), bool(received))[1])  # connected
    # A frame over the limit: ZeroMQ drops the connection mid-message (never buffered whole)
    # and would not reconnect by itself; the subscriber does, and the next policy arrives.
    # (PUB drops messages for a busy subscriber: resend until it has been cut off.)
    oversized = [b"header", b"\0" * (3 * size)]
    assert wait_for(lambda: (publisher._socket.send_multipart(oversized), subscriber.reconnects >= 1)[1])
    assert wait_for(lambda: (publisher.publish(2, policy_file), len(received) == 2)[1])
    assert received == [1, 2] and subscriber._thread.is_alive() and not subscriber.refused
    subscriber.close(), publisher.close(), ctx.term()
