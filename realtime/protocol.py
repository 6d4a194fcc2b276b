"""Wire format of the experience and weight channels, and its validation.

An experience message is multipart: frame 0 is a small msgpack header
``{v, kind, actor, session, episode, seq, policy, keys, dtypes, shapes}`` and
frames 1…n are the raw buffers of the arrays, in ``keys`` order, sent without
copying. Arrays carry a leading time axis (a chunk of steps). ``session``
identifies one run of an actor process: a restarted actor numbers its
messages from 0 again under a new session. A weight message is
``{v, kind, version, sha256, sidecar, time}`` followed by the ONNX bytes
(``time``: publication wall clock, for measuring swap latency). A status
message is one frame ``{v, kind, actor, stats}`` with a flat map of counters.

Every decode validates everything it reads and raises :class:`ProtocolError`
with a short reason code, so a receiver can count refusals per reason; no
other exception escapes for malformed input (anything unforeseen a message
provokes is refused with reason ``malformed``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
#: dtypes an experience array may have.
DTYPES = frozenset({"float32", "float16", "float64", "uint8", "int32", "int64", "bool"})


class ProtocolError(ValueError):
    """A message that is refused; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a receiver accepts.

    Attributes:
        max_header_bytes: size of the msgpack header frame.
        max_message_bytes: total size of all buffers.
        max_frames: number of frames.
        max_steps: length of the leading time axis.
    """

    max_header_bytes: int = 64 * 1024
    max_message_bytes: int = 256 * 2**20
    max_frames: int = 64
    max_steps: int = 4096


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class Experience:
    """A decoded experience chunk."""

    actor: str
    episode: int
    seq: int
    policy: int
    arrays: dict[str, np.ndarray]
    session: int = 0

    @property
    def steps(self) -> int:
        """Length of the chunk's time axis."""
        return next(iter(self.arrays.values())).shape[0]


def encode_experience(*, actor: str, episode: int, seq: int, policy: int, arrays: dict[str, np.ndarray], session: int = 0) -> list[Any]:
    """Frames of one experience message (array buffers are not copied when contiguous).

    Args:
        actor: the sending actor's id.
        episode: episode counter of that actor.
        seq: per-actor message sequence number (0, 1, 2, …), for gap counting.
        policy: version of the policy that produced the data.
        arrays: ``{key: [T, ...]}`` with the same T for every key.
        session: identifies this run of the actor process (see the module docstring).
    """
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    header = {
        "v": PROTOCOL_VERSION,
        "kind": "exp",
        "actor": actor,
        "session": int(session),
        "episode": int(episode),
        "seq": int(seq),
        "policy": int(policy),
        "keys": list(arrays),
        "dtypes": [a.dtype.name for a in arrays.values()],
        "shapes": [list(a.shape) for a in arrays.values()],
    }
    return [msgpack.packb(header), *(memoryview(a).cast("B") for a in arrays.values())]


def _untrusted(decode: Callable[..., Any]) -> Callable[..., Any]:
    """Makes ``decode`` refuse, never crash: any other exception becomes a ProtocolError (reason ``malformed``).

    The explicit checks give the clear reasons; this is the net under them,
    so a receiver that counts ProtocolErrors cannot be killed by a message.
    """

    @functools.wraps(decode)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return decode(*args, **kwargs)
        except ProtocolError:
            raise
        except Exception as exc:  # includes RecursionError and MemoryError
            raise ProtocolError("malformed", f"{type(exc).__name__}: {str(exc)[:200]}") from None

    return wrapper


def _buffer(frame: Any) -> memoryview:
    # zmq.Frame exposes .buffer; bytes and memoryviews are used as they are.
    return memoryview(getattr(frame, "buffer", frame)).cast("B")


def _header(frames: Sequence[Any], limits: Limits, kind: str) -> dict[str, Any]:
    if not frames:
        raise ProtocolError("frames", "empty message")
    if len(frames) > limits.max_frames:
        raise ProtocolError("frames", f"{len(frames)} frames, at most {limits.max_frames}")
    raw = _buffer(frames[0])
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError("header_size", f"{raw.nbytes} bytes, at most {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)  # size already bounded above
    except Exception as exc:  # msgpack raises many types for garbage
        raise ProtocolError("msgpack", str(exc)[:200]) from None
    if not isinstance(header, dict):
        raise ProtocolError("schema", f"header is {type(header).__name__}, not a map")
    if header.get("v") != PROTOCOL_VERSION or isinstance(header.get("v"), bool):  # True == 1
        raise ProtocolError("version", f"protocol version {_short(header.get('v'))}, expected {PROTOCOL_VERSION}")
    if header.get("kind") != kind:
        raise ProtocolError("schema", f"message kind {_short(header.get('kind'))}, expected {kind!r}")
    return header


def _field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError("schema", f"header field {name!r} is {_short(value)}")
    return value


def _short(value: Any) -> str:
    # A refusal message quotes the offending value, but never all 64 KiB of it.
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}…"


def _is_dim(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31


@_untrusted
def decode_experience(
    frames: Sequence[Any], *, limits: Limits = DEFAULT_LIMITS, schema: dict[str, tuple[str, tuple[int, ...]]] | None = None
) -> Experience:
    """Validates and decodes one experience message.

    Args:
        frames: the received frames.
        limits: size limits.
        schema: ``{key: (dtype, shape without the time axis)}`` the receiver
            expects; every key must be present with exactly that dtype and
            shape (extra keys are refused).

    Raises:
        ProtocolError: with reason ``frames``, ``header_size``, ``msgpack``,
            ``version``, ``schema``, ``dtype``, ``shape``, ``size``,
            ``nonfinite`` or ``malformed``.
    """
    header = _header(frames, limits, "exp")
    actor = _field(header, "actor", str)
    if not 0 < len(actor) <= 128:
        raise ProtocolError("schema", "actor id must be 1–128 characters")
    session, episode, seq, policy = (_field(header, n, int) for n in ("session", "episode", "seq", "policy"))
    if min(session, episode, seq, policy) < 0:
        raise ProtocolError("schema", "session, episode, seq and policy must be non-negative")
    keys, dtypes, shapes = (_field(header, n, list) for n in ("keys", "dtypes", "shapes"))
    if not keys or not len(keys) == len(dtypes) == len(shapes) == len(frames) - 1:
        raise ProtocolError("frames", f"{len(keys)} keys, {len(dtypes)} dtypes, {len(shapes)} shapes for {len(frames) - 1} buffers")
    # Types first: everything below hashes, compares and multiplies these values.
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise ProtocolError("schema", "keys must be distinct strings")
    for key, dtype, shape in zip(keys, dtypes, shapes):
        if not isinstance(dtype, str) or dtype not in DTYPES:
            raise ProtocolError("dtype", f"{key!r}: dtype {_short(dtype)} not allowed")
        if not isinstance(shape, list) or not shape or not all(_is_dim(d) for d in shape):
            raise ProtocolError("shape", f"{key!r}: bad shape {_short(shape)} (a list of 0…2**31)")
    if schema is not None and set(keys) != set(schema):
        raise ProtocolError("schema", f"keys {sorted(keys)} differ from the expected {sorted(schema)}")
    total, arrays, steps = 0, {}, None
    for key, dtype, shape, frame in zip(keys, dtypes, shapes, frames[1:]):
        if steps is None:
            steps = shape[0]
        if shape[0] != steps or not 0 < steps <= limits.max_steps:
            raise ProtocolError("shape", f"{key!r}: time axis {shape[0]} (expected {steps}, at most {limits.max_steps})")
        if schema is not None and (dtype, tuple(shape[1:])) != (schema[key][0], tuple(schema[key][1])):
            raise ProtocolError(
                "dtype" if dtype != schema[key][0] else "shape",
                f"{key!r}: got {dtype} {shape[1:]}, expected {schema[key][0]} {list(schema[key][1])}",
            )
        # Python ints: a numpy product wraps past 2**63 (2**64 bytes would read as 0 and pass an empty frame).
        expected = math.prod(shape) * np.dtype(dtype).itemsize
        total += expected
        if total > limits.max_message_bytes:
            raise ProtocolError("size", f"{key!r}: {dtype} {shape} makes the message larger than {limits.max_message_bytes} bytes")
        buffer = _buffer(frame)
        if buffer.nbytes != expected:
            raise ProtocolError("size", f"{key!r}: {buffer.nbytes} bytes for {dtype} {shape} ({expected} expected)")
        array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ProtocolError("nonfinite", f"{key!r} has non-finite values")
        arrays[key] = array
    return Experience(actor=actor, episode=episode, seq=seq, policy=policy, arrays=arrays, session=session)


def encode_weights(*, version: int, onnx_bytes: bytes, sidecar: dict[str, Any], sent_at: float | None = None) -> list[Any]:
    """Frames of one weight message: header (version, sha256, sidecar, time) and the ONNX bytes."""
    header = {
        "v": PROTOCOL_VERSION,
        "kind": "weights",
        "version": int(version),
        "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "sidecar": json.dumps(sidecar),
        "time": float(time.time() if sent_at is None else sent_at),
    }
    return [msgpack.packb(header), onnx_bytes]


@_untrusted
def decode_weights(frames: Sequence[Any], *, limits: Limits = DEFAULT_LIMITS) -> tuple[int, memoryview, dict[str, Any]]:
    """Validates a weight message; returns ``(version, onnx_bytes, sidecar)`` (the bytes as a view of the frame).

    The publication time is returned in the sidecar as ``published_at``.

    Raises:
        ProtocolError: for a malformed message or a sha256 that does not match
            the bytes (reason ``hash``) or the sidecar's own hash (never
            another exception, see :func:`_untrusted`).
    """
    header = _header(frames, limits, "weights")
    if len(frames) != 2:
        raise ProtocolError("frames", f"{len(frames)} frames, expected 2")
    version = _field(header, "version", int)
    if version < 0:
        raise ProtocolError("schema", f"version {version} is negative")
    digest = _field(header, "sha256", str)
    payload = _buffer(frames[1])  # no copy: a model can be tens of MB
    if len(payload) > limits.max_message_bytes:
        raise ProtocolError("size", f"model larger than {limits.max_message_bytes} bytes")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ProtocolError("hash", "sha256 of the model bytes does not match the header")
    text = _field(header, "sidecar", str)
    try:
        sidecar = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError("schema", f"sidecar is not JSON: {exc}") from None
    except RecursionError:  # "[[[[…" fits the header limit and exhausts the parser's stack
        raise ProtocolError("schema", "sidecar JSON is nested too deeply") from None
    if not isinstance(sidecar, dict) or sidecar.get("sha256") != digest:
        raise ProtocolError("hash", "the sidecar's sha256 does not match the model")
    sent_at = header.get("time", 0.0)
    sidecar["published_at"] = float(sent_at) if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool) else 0.0
    return version, payload, sidecar


#: Largest status map a receiver accepts (entries).
MAX_STATUS_ENTRIES = 256


def encode_status(*, actor: str, stats: dict[str, Any]) -> list[Any]:
    """One-frame status message: an actor's counters (flat map of numbers and short strings)."""
    return [msgpack.packb({"v": PROTOCOL_VERSION, "kind": "status", "actor": actor, "stats": stats})]


@_untrusted
def decode_status(frames: Sequence[Any], *, limits: Limits = DEFAULT_LIMITS) -> tuple[str, dict[str, Any]]:
    """Validates a status message; returns ``(actor, stats)``.

    Raises:
        ProtocolError: for a malformed message (reasons as for experience).
    """
    header = _header(frames, limits, "status")
    if len(frames) != 1:
        raise ProtocolError("frames", f"{len(frames)} frames, expected 1")
    actor = _field(header, "actor", str)
    if not 0 < len(actor) <= 128:
        raise ProtocolError("schema", "actor id must be 1–128 characters")
    stats = _field(header, "stats", dict)
    if len(stats) > MAX_STATUS_ENTRIES:
        raise ProtocolError("schema", f"{len(stats)} status entries, at most {MAX_STATUS_ENTRIES}")
    for key, value in stats.items():
        ok_value = value is None or isinstance(value, (int, float, bool)) or isinstance(value, str) and len(value) <= 256
        if not isinstance(key, str) or not ok_value:
            raise ProtocolError("schema", f"status entry {key!r} is not a number or short string")
    return actor, stats


class SequenceTracker:
    """Per-actor accounting of what arrived, what was refused and what is missing.

    Sequence numbers of one actor session start at 0 and increase by one per
    message; a jump counts the numbers in between as missing, a number at or
    below the last one is a duplicate (refused). A larger ``session`` is a
    restarted actor: its numbering starts again (the counts accumulate); a
    message of an older session is refused as stale.
    """

    def __init__(self) -> None:
        self.actors: dict[str, dict[str, Any]] = {}

    def _entry(self, actor: str) -> dict[str, Any]:
        return self.actors.setdefault(
            actor, {"session": -1, "sessions": 0, "messages": 0, "steps": 0, "missing": 0, "duplicates": 0, "stale": 0, "next": 0}
        )

    def accept(self, exp: Experience) -> bool:
        """Records an arrival; False (and counted) for a duplicate or a stale session."""
        entry = self._entry(exp.actor)
        if exp.session < entry["session"]:
            entry["stale"] += 1
            return False
        if exp.session > entry["session"]:
            entry["session"], entry["next"] = exp.session, 0
            entry["sessions"] += 1
        if exp.seq < entry["next"]:
            entry["duplicates"] += 1
            return False
        entry["missing"] += exp.seq - entry["next"]
        entry["next"] = exp.seq + 1
        entry["messages"] += 1
        entry["steps"] += exp.steps
        return True

    def state(self) -> dict[str, dict[str, Any]]:
        """A copy of the counters (for checkpoints)."""
        return {actor: dict(entry) for actor, entry in self.actors.items()}

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        """Restores :meth:`state`."""
        self.actors = {actor: dict(entry) for actor, entry in state.items()}
