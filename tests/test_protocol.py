"""Experience and weight messages: round trips, validation, 1,000 malformed messages, gap counting."""

import hashlib
from collections import Counter

import msgpack
import numpy as np
import pytest

from reverie.realtime.protocol import (
    Experience,
    Limits,
    ProtocolError,
    SequenceTracker,
    decode_experience,
    decode_status,
    decode_weights,
    encode_experience,
    encode_weights,
)

# Robot side: runs in the robot-only install too (make test-robot).
pytestmark = pytest.mark.robot


def chunk(T=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 255, (T, 64, 64, 3), dtype=np.uint8),
        "position": rng.normal(size=(T, 5)).astype(np.float32),
        "deter": rng.normal(size=(T, 8)).astype(np.float16),
        "reward": rng.normal(size=T).astype(np.float64),
        "count": np.arange(T, dtype=np.int64),
        "index": np.arange(T, dtype=np.int32),
        "is_last": np.zeros(T, bool),
    }


SCHEMA = {k: (v.dtype.name, v.shape[1:]) for k, v in chunk().items()}


def test_round_trip_all_dtypes_and_pixels():
    arrays = chunk()
    frames = encode_experience(actor="a1", episode=3, seq=7, policy=2, arrays=arrays)
    exp = decode_experience([bytes(f) for f in frames], schema=SCHEMA)
    assert (exp.actor, exp.episode, exp.seq, exp.policy, exp.steps) == ("a1", 3, 7, 2, 5)
    for key, value in arrays.items():
        assert exp.arrays[key].dtype == value.dtype and np.array_equal(exp.arrays[key], value)


def test_buffers_are_sent_without_copying():
    arrays = chunk()
    frames = encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=arrays)
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), arrays["image"])


def test_a_sensor_of_size_zero_is_encoded_and_decoded():
    """An empty sensor (shape ``[T, 0]``) once made the sender raise TypeError (memoryview.cast) in the actor's loop."""
    arrays = {"empty": np.zeros((3, 0), np.float32), "reward": np.ones(3, np.float32)}
    frames = encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=arrays)
    schema = {"empty": ("float32", (0,)), "reward": ("float32", ())}
    exp = decode_experience([bytes(f) for f in frames], schema=schema)
    assert exp.arrays["empty"].shape == (3, 0) and exp.arrays["reward"].tolist() == [1.0, 1.0, 1.0]


def good_frames():
    return [bytes(f) for f in encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=chunk())]


def header_with(**changes):
    frames = good_frames()
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header), *frames[1:]]


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "frames"),
        (lambda: good_frames()[:3], "frames"),
        (lambda: [b"\xc1\xff garbage"] + good_frames()[1:], "msgpack"),
        (lambda: header_with(v=99), "version"),
        (lambda: header_with(kind="weights"), "schema"),
        (lambda: header_with(dtypes=["complex64"] * 7), "dtype"),
        (lambda: header_with(dtypes=[["float32"]] * 7), "dtype"),  # unhashable: once a TypeError
        (lambda: header_with(dtypes=[{"uint8": 1}] * 7), "dtype"),
        (lambda: header_with(keys=[["image"]] + list(chunk())[1:]), "schema"),
        (lambda: header_with(shapes=[{"0": 5}] + [list(v.shape) for v in list(chunk().values())[1:]]), "shape"),
        (lambda: header_with(shapes=[[5, -64, 64, 3]] + [list(v.shape) for v in list(chunk().values())[1:]]), "shape"),
        (lambda: header_with(shapes=[[5.0, 64, 64, 3]] + [list(v.shape) for v in list(chunk().values())[1:]]), "shape"),
        (lambda: header_with(shapes={"image": [5, 64, 64, 3]}), "schema"),
        (lambda: header_with(shapes=[[5, 64, 64, 4]] + [list(v.shape) for v in list(chunk().values())[1:]]), "shape"),
        (lambda: header_with(shapes=[[2**31, 2**31, 2**31, 3]] + [list(v.shape) for v in list(chunk().values())[1:]]), "shape"),
        (lambda: header_with(seq=-1), "schema"),
        (lambda: header_with(actor=""), "schema"),
        (lambda: [b"x" * (70 * 1024)] + good_frames()[1:], "header_size"),
        (lambda: good_frames()[:1] + [b""] + good_frames()[2:], "size"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(frames, reason):
    frames = frames() if callable(frames) else frames
    with pytest.raises(ProtocolError) as err:
        decode_experience(frames, schema=SCHEMA)
    assert err.value.reason == reason


def test_schema_mismatches_and_nonfinite_are_refused():
    arrays = chunk()
    arrays["position"] = arrays["position"].astype(np.float64)
    with pytest.raises(ProtocolError, match="dtype"):
        decode_experience(encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=arrays), schema=SCHEMA)
    arrays = chunk()
    arrays["position"][2, 1] = np.nan
    with pytest.raises(ProtocolError) as err:
        decode_experience(encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=arrays), schema=SCHEMA)
    assert err.value.reason == "nonfinite"
    arrays = chunk()
    del arrays["reward"]
    with pytest.raises(ProtocolError, match="schema"):
        decode_experience(encode_experience(actor="a", episode=0, seq=0, policy=0, arrays=arrays), schema=SCHEMA)


def test_thousand_random_and_mutated_messages_are_all_refused_and_counted():
    rng = np.random.default_rng(0)
    good, arrays = good_frames(), chunk()
    reasons, still_valid = Counter(), 0
    for i in range(1000):
        kind = i % 5
        if kind == 0:  # random bytes
            frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 9)))]
        elif kind == 1:  # truncated buffer
            frames = list(good)
            j = int(rng.integers(1, len(frames)))
            frames[j] = frames[j][: int(rng.integers(0, len(frames[j])))]
        elif kind == 2:  # flipped bytes in the header
            raw = bytearray(good[0])
            for _ in range(int(rng.integers(1, 6))):
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
            frames = [bytes(raw), *good[1:]]
            try:
                exp = decode_experience(frames, schema=SCHEMA)
            except ProtocolError as exc:
                reasons[exc.reason] += 1
                continue
            # A flip that kept the message valid (e.g. in the actor id or the seq) must decode to
            # exactly what the mutated header says, over the untouched buffers.
            header = msgpack.unpackb(bytes(raw))
            assert (exp.actor, exp.session, exp.episode, exp.seq, exp.policy) == tuple(
                header[k] for k in ("actor", "session", "episode", "seq", "policy")
            )
            assert exp.arrays.keys() == arrays.keys() and all(np.array_equal(exp.arrays[k], v) for k, v in arrays.items())
            still_valid += 1
            continue
        elif kind == 3:  # huge declared sizes
            frames = header_with(shapes=[[int(rng.integers(1, 2**30)), 64, 64, 3]] + [list(v.shape) for v in list(chunk().values())[1:]])
        else:  # valid msgpack of the wrong structure
            frames = [msgpack.packb(rng.integers(0, 100, 5).tolist()), *good[1:]]
        with pytest.raises(ProtocolError) as err:
            decode_experience(frames, schema=SCHEMA)
        reasons[err.value.reason] += 1
    assert sum(reasons.values()) + still_valid == 1000 and sum(reasons.values()) >= 900
    assert {"msgpack", "size", "schema"} <= set(reasons)


def test_sequence_gaps_and_duplicates_are_counted():
    tracker = SequenceTracker()
    for seq in (0, 1, 4, 5, 5, 3, 9):
        tracker.accept(Experience(actor="a", episode=0, seq=seq, policy=0, arrays={"x": np.zeros((2, 1), np.float32)}))
    entry = tracker.actors["a"]
    assert entry["missing"] == 2 + 3  # 2, 3 then 6, 7, 8 (3 arrived late: a duplicate)
    assert entry["duplicates"] == 2 and entry["messages"] == 5 and entry["steps"] == 10


def test_weights_round_trip_and_tampering():
    model = b"onnx-bytes" * 100
    sidecar = {"sha256": hashlib.sha256(model).hexdigest(), "format": "x"}
    frames = encode_weights(version=4, onnx_bytes=model, sidecar=sidecar, sent_at=123.5)
    version, payload, side = decode_weights(frames)
    assert version == 4 and payload == model and side.pop("published_at") == 123.5 and side == sidecar
    with pytest.raises(ProtocolError) as err:
        decode_weights([frames[0], model + b"!"])
    assert err.value.reason == "hash"
    bad_sidecar = encode_weights(version=1, onnx_bytes=model, sidecar={"sha256": "0" * 64})
    with pytest.raises(ProtocolError, match="hash"):
        decode_weights(bad_sidecar)
    with pytest.raises(ProtocolError):
        decode_weights([msgpack.packb({"v": 1, "kind": "weights", "version": 1, "sha256": "x", "sidecar": "{"}), model])


def test_limits():
    frames = good_frames()
    with pytest.raises(ProtocolError, match="size"):
        decode_experience(frames, limits=Limits(max_message_bytes=1000))
    with pytest.raises(ProtocolError, match="frames"):
        decode_experience(frames, limits=Limits(max_frames=3))


def test_a_shape_whose_size_overflows_64_bits_is_refused_without_a_schema():
    # 2**31 · 2**31 · 4 bytes = 2**64: a numpy int64 product wraps to 0, which an empty frame would match.
    frames = [bytes(f) for f in encode_experience(actor="a", episode=0, seq=0, policy=0, arrays={"x": np.zeros((1, 4), np.uint8)})]
    header = msgpack.unpackb(frames[0])
    for shape in ([1, 2**31, 2**31, 4], [1, 2**31, 2**31, 2**31, 2**31]):
        with pytest.raises(ProtocolError) as err:
            decode_experience([msgpack.packb(dict(header, shapes=[shape])), b""])
        assert err.value.reason == "size" and "larger than" in str(err.value)


# Values of the wrong type or range for every header field (nested, unhashable, huge, negative …).
GARBAGE = [None, True, -1, 2**63, 1.5, "x", "", b"\xff", [], [[]], [None], [["float32"]], [{"a": 1}], {}, {"a": [1]}, [[[[1]]]]]


@pytest.mark.parametrize("field", ["v", "kind", "actor", "session", "episode", "seq", "policy", "keys", "dtypes", "shapes"])
def test_every_experience_header_field_of_any_type_is_refused_or_decoded(field):
    good = good_frames()
    for value in GARBAGE:
        for schema in (SCHEMA, None):
            frames = header_with(**{field: value})
            try:
                exp = decode_experience(frames, schema=schema)
            except ProtocolError:
                continue  # anything else (TypeError, ValueError …) fails the test
            # Accepted only as a legitimate value of a free field, and decoded as sent.
            assert field in ("actor", "session", "episode", "seq", "policy"), f"{field}={value!r} accepted"
            assert getattr(exp, field) == value and type(getattr(exp, field)) is type(value)
    assert decode_experience(good, schema=SCHEMA).actor == "a"


@pytest.mark.parametrize("field", ["v", "kind", "version", "sha256", "sidecar", "time"])
def test_every_weight_header_field_of_any_type_is_refused(field):
    model = b"onnx-bytes" * 10
    frames = encode_weights(version=1, onnx_bytes=model, sidecar={"sha256": hashlib.sha256(model).hexdigest()})
    header = msgpack.unpackb(frames[0])
    for value in GARBAGE:
        try:
            version, _, side = decode_weights([msgpack.packb(dict(header, **{field: value})), model])
        except ProtocolError:
            continue
        # Accepted only as a legitimate version, or with the optional time (a bad one reads as 0).
        if field == "version":
            assert type(value) is int and version == value >= 0
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            assert field == "time" and version == 1 and side["published_at"] == (float(value) if number else 0.0)


def test_deeply_nested_sidecar_is_refused_not_a_recursion_error():
    model = b"onnx-bytes"
    digest = hashlib.sha256(model).hexdigest()
    header = {"v": 1, "kind": "weights", "version": 1, "sha256": digest, "sidecar": "[" * 20_000 + "]" * 20_000}
    assert len(msgpack.packb(header)) < Limits().max_header_bytes  # it fits: the parser has to cope
    with pytest.raises(ProtocolError) as err:
        decode_weights([msgpack.packb(header), model])
    assert err.value.reason == "schema" and "nested" in str(err.value)


def test_anything_unforeseen_is_a_protocol_error():
    # A frame that is not a buffer at all: no explicit check covers it, the net does.
    for decode in (decode_experience, decode_weights, decode_status):
        with pytest.raises(ProtocolError) as err:
            decode([object(), b""])
        assert err.value.reason == "malformed" and "TypeError" in str(err.value)
