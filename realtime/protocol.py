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

import collections
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

from reverie.envs.base import all_finite

PROTOCOL_VERSION = 1
#: dtypes an experience array may have.
DTYPES = frozenset({"float32", "float16", "float64", "uint8", "int32", "int64", "bool"})


class ProtocolError(ValueError):
    """A message that is refused; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        #: ``(actor, session, seq)`` of an experience message whose header was sound, else None.
        self.origin: tuple[str, int, int] | None = None


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
    # Flat byte views (no copy); unlike memoryview.cast, this also takes an array with a zero in its shape.
    return [msgpack.packb(header), *(a.reshape(-1).view(np.uint8).data for a in arrays.values())]


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
    try:
        return _decode_arrays(header, frames, limits, schema, actor, session, episode, seq, policy)
    except ProtocolError as exc:
        exc.origin = (actor, session, seq)  # the header was sound: the sender's stream can still account for it
        raise


def _decode_arrays(
    header: dict[str, Any],
    frames: Sequence[Any],
    limits: Limits,
    schema: dict[str, tuple[str, tuple[int, ...]]] | None,
    actor: str,
    session: int,
    episode: int,
    seq: int,
    policy: int,
) -> Experience:
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
        if not all_finite(array):
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


#: Sessions per actor whose numbering is remembered, and sequence numbers per actor that count as
#: duplicates when seen again (without CURVE; see SequenceTracker).
RECENT_SESSIONS = 4
RECENT_SEQS = 32


class SequenceTracker:
    """Per-actor accounting of what arrived, what was refused and what is missing.

    Sequence numbers of one actor session start at 0 and increase by one per
    message; a jump counts the numbers in between as missing, a number at or
    below the last one is a duplicate (refused). A larger ``session`` is a
    restarted actor: its numbering starts again (the counts accumulate); a
    message of an older session is refused as stale.

    Without authentication (``window`` set: CURVE off) anyone can send under
    any actor id, so the header fields that drive the accounting are bounded:
    a sequence number more than ``window`` ahead of or behind the expected one
    counts as a reset of that actor's numbering (``resets``), never as
    ``window``-many missing messages; a switch back to one of the last few
    sessions resumes its numbering; and only a number among the last
    ``RECENT_SEQS`` seen is a duplicate, so a forged number ahead cannot turn
    the real actor's later messages into duplicates or stale ones.

    The table holds at most ``max_actors`` ids; a new id evicts the one idle
    longest, whose counts move to :attr:`retired` (totals), so a flood of ids
    can neither grow the table nor lock out a new actor.

    A message is also checked against the episode structure its header
    claims: the chunk after an episode's end, or of a new episode number, must
    start with ``is_first``, and episode numbers never decrease within a session.
    """

    #: Counters of one actor that add up across evictions.
    TOTALS = ("sessions", "messages", "steps", "missing", "duplicates", "stale", "resets")

    def __init__(self, *, window: int | None = None, max_actors: int = 4096) -> None:
        self.window = None if window is None else int(window)
        self.max_actors = int(max_actors)
        self.actors: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        #: counts of evicted actors, summed.
        self.retired: dict[str, int] = dict.fromkeys(self.TOTALS, 0)
        #: why the last refused message was refused (a reason code, and in words).
        self.reason: str | None = None
        self.detail: str = ""

    def _entry(self, actor: str) -> dict[str, Any]:
        entry = self.actors.get(actor)
        if entry is not None:
            self.actors.move_to_end(actor)
            return entry
        while len(self.actors) >= self.max_actors:
            _, old = self.actors.popitem(last=False)
            for key in self.TOTALS:
                self.retired[key] += int(old.get(key, 0))
            self.retired["evicted"] = self.retired.get("evicted", 0) + 1
        entry = {**dict.fromkeys(self.TOTALS, 0), "session": -1, "next": 0, "episode": -1, "ended": True, "refused": {}}
        self.actors[actor] = entry
        return entry

    def accept(self, exp: Experience, validate: Callable[[Experience], None] | None = None) -> bool:
        """Records an arrival; False (reason in :attr:`reason`, counted per actor) when it is refused.

        Args:
            exp: the decoded message.
            validate: checks the values by meaning and raises a ``ValueError``
                with a ``reason`` attribute to refuse them. A message refused
                here still counts as arrived (it is not missing).
        """
        self.reason = None
        entry = self._entry(exp.actor)
        follows = self._advance(entry, exp.session, exp.seq)
        if follows is None:
            return False
        try:
            if validate is not None:
                validate(exp)
            if follows:
                _check_episode(exp, entry)
        except ValueError as exc:
            return self._refuse(entry, getattr(exc, "reason", "meaning"), str(exc))
        entry["messages"] += 1
        entry["steps"] += exp.steps
        entry["episode"] = exp.episode
        last = exp.arrays.get("is_last")
        entry["ended"] = bool(last[-1]) if last is not None else False
        return True

    def refuse_arrival(self, actor: str, session: int, seq: int, reason: str, detail: str = "") -> None:
        """A message whose header was sound but whose arrays were refused: it arrived (not missing), counted per actor."""
        self.reason = None
        entry = self._entry(actor)
        if self._advance(entry, session, seq) is not None:
            self._refuse(entry, reason, detail)

    def _advance(self, entry: dict[str, Any], session: int, seq: int) -> bool | None:
        """Moves the actor's numbering past ``seq``; whether the message directly follows the last one, None when refused."""
        bounded = self.window is not None
        if session != entry["session"]:
            if session < entry["session"] and not bounded:
                self._refuse(entry, "stale")
                return None
            # Unauthenticated, a session switch may be forged: remember where the last few sessions stood,
            # so that the real one continues its numbering when its messages come back.
            recent = entry.setdefault("recent", {})
            if entry["session"] >= 0:
                recent[entry["session"]] = entry["next"]
            known = recent.pop(session, None) if bounded else None
            while len(recent) > RECENT_SESSIONS:
                recent.pop(next(iter(recent)))
            if known is None:
                entry["sessions"] += 1
            else:
                entry["resets"] += 1
            entry.update(session=session, next=known or 0, episode=-1, ended=True)
        gap = seq - entry["next"]
        if not bounded:
            if gap < 0:
                entry["duplicates"] += 1
                self._refuse(entry, "duplicate")
                return None
            entry["missing"] += gap
            entry["next"] = seq + 1
            return gap == 0 and entry["episode"] >= 0
        # Unauthenticated: a forged number ahead must not turn the real messages behind it into duplicates,
        # so only a number seen among the last few is one; an older unseen number fills a gap.
        seen = entry.setdefault("seen", [])
        if seq in seen:
            entry["duplicates"] += 1
            self._refuse(entry, "duplicate")
            return None
        seen.append(seq)
        del seen[:-RECENT_SEQS]
        if abs(gap) > self.window:
            entry["resets"] += 1
        elif gap > 0:
            entry["missing"] += gap
        elif gap < 0 and entry["missing"]:
            entry["missing"] -= 1  # it was counted missing when a later number arrived
        if gap >= 0 or abs(gap) > self.window:
            entry["next"] = seq + 1
        return gap == 0 and entry["episode"] >= 0

    def _refuse(self, entry: dict[str, Any], reason: str, detail: str = "") -> bool:
        self.detail = detail or reason
        if reason == "stale":
            entry["stale"] += 1
        entry["refused"][reason] = entry["refused"].get(reason, 0) + 1
        self.reason = reason
        return False

    def state(self) -> dict[str, dict[str, Any]]:
        """A copy of the per-actor counters (for checkpoints); :attr:`retired` holds the evicted ones' totals."""
        return {
            actor: {
                **entry,
                "refused": dict(entry.get("refused", {})),
                "recent": dict(entry.get("recent", {})),
                "seen": list(entry.get("seen", [])),
            }
            for actor, entry in self.actors.items()
        }

    def load_state(self, state: dict[str, dict[str, Any]], retired: dict[str, int] | None = None) -> None:
        """Restores :meth:`state` (and :attr:`retired`); entries of older checkpoints get the new fields."""
        fresh = {**dict.fromkeys(self.TOTALS, 0), "session": -1, "next": 0, "episode": -1, "ended": True}
        self.actors = collections.OrderedDict(
            (actor, {**fresh, **entry, "refused": dict(entry.get("refused", {}))}) for actor, entry in state.items()
        )
        self.retired = {**dict.fromkeys(self.TOTALS, 0), **(retired or {})}


def _check_episode(exp: Experience, entry: dict[str, Any]) -> None:
    """The chunk that directly follows another of its actor session must continue its episode structure."""
    first = exp.arrays.get("is_first")
    if first is None:
        return
    starts = bool(first[0])
    if exp.episode < entry["episode"]:
        raise ProtocolError("episode", f"episode {exp.episode} after episode {entry['episode']}")
    if (entry["ended"] or exp.episode != entry["episode"]) and not starts:
        why = "the previous chunk ended its episode" if entry["ended"] else f"episode {entry['episode']} became {exp.episode}"
        raise ProtocolError("episode", f"{why}, but the chunk does not start with is_first")
