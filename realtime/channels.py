"""ZeroMQ experience (actor → learner) and weight (learner → actors) channels.

Experience: the actor's :class:`ExperienceSender` queues chunks in a bounded
deque drained by its own thread, so networking never delays a control tick;
while the learner is away it keeps up to ``queue_size`` messages and then drops
the oldest, counting each drop. The learner's :class:`ExperienceReceiver`
validates every message (:mod:`reverie.realtime.protocol`) and accounts per
actor for what arrived, what was refused (by reason) and what is missing.

Weights: the learner's :class:`WeightPublisher` publishes (version, sha256,
ONNX bytes + sidecar); the actor's :class:`WeightSubscriber` checks them,
builds the new onnxruntime session on its own thread and offers it to the
control loop, which swaps it in between two ticks.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from reverie.envs.step_spec import StepSpec

from .protocol import (
    DEFAULT_LIMITS,
    Experience,
    Limits,
    ProtocolError,
    SequenceTracker,
    decode_experience,
    decode_status,
    decode_weights,
    encode_experience,
    encode_status,
    encode_weights,
)
from .signature import read_payload, sidecar_path


def lower_thread_priority(niceness: int = 10) -> None:
    """Makes the calling thread yield the CPU to the control thread (Linux: per-thread nice).

    Helper threads (weights, sending, status) share the cores with the
    control loop; when the cores are busy the scheduler should run the loop.
    Silently does nothing where per-thread priorities are not available.
    """
    try:  # a thread started by a real-time thread inherits its policy: drop it
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError):
        pass


def max_frame_bytes(limits: Limits) -> int:
    """ZeroMQ's ``MAXMSGSIZE`` for a receiver with ``limits``.

    ZeroMQ applies it to each frame and drops the connection of a peer that
    sends a larger one, while it arrives (the message is never seen, so it
    is not counted as refused). No valid frame is larger than the header
    plus all buffers; the exact limits are checked when the message is
    decoded. A connecting socket is not reconnected after such a drop
    (libzmq treats it as a protocol error): see :class:`WeightSubscriber`.
    """
    return limits.max_message_bytes + limits.max_header_bytes


class ExperienceSender:
    """Actor side of the experience channel.

    Args:
        address: the learner's address, e.g. ``tcp://127.0.0.1:5555`` or ``ipc:///tmp/x``.
        actor: this actor's id.
        queue_size: messages kept while the learner is unreachable; the
            oldest are dropped beyond it (counted in ``dropped``).
        context: ZeroMQ context (a new one by default).
        secure: optional callable that configures CURVE on the socket.
        session: identifies this run of the actor (default: the start time in
            µs, so a restarted actor has a larger one).
    """

    def __init__(
        self,
        address: str,
        actor: str,
        *,
        queue_size: int = 1000,
        context: zmq.Context | None = None,
        secure: Callable[[zmq.Socket], None] | None = None,
        session: int | None = None,
    ) -> None:
        self.actor = actor
        self.session = time.time_ns() // 1000 if session is None else int(session)
        self.context = context or zmq.Context.instance()
        self._queue: collections.deque = collections.deque()
        self._status: list[Any] | None = None
        self._queue_size = queue_size
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self.seq = 0
        self.enqueued = self.sent = self.dropped = 0
        self._socket = self.context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 16)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Queue only to a completed connection: while the learner is away the
        # messages stay in our deque, where drops are counted.
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        if secure is not None:
            secure(self._socket)
        self._socket.connect(address)
        self._thread = threading.Thread(target=self._drain, name=f"exp-sender-{actor}", daemon=True)
        self._thread.start()

    def send(self, arrays: dict[str, np.ndarray], *, episode: int, policy: int) -> None:
        """Queues one chunk ``{key: [T, ...]}``; never blocks on the network."""
        frames = encode_experience(
            actor=self.actor,
            session=self.session,
            episode=episode,
            seq=self.seq,
            policy=policy,
            arrays={k: np.array(v) for k, v in arrays.items()},
        )
        self.seq += 1
        with self._lock:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(frames)
            self.enqueued += 1
            self._lock.notify()

    def send_status(self, stats: dict[str, Any]) -> None:
        """Offers the actor's counters to the learner; only the newest unsent one is kept."""
        frames = encode_status(actor=self.actor, stats=stats)
        with self._lock:
            self._status = frames
            self._lock.notify()

    @property
    def depth(self) -> int:
        """Messages waiting to be sent."""
        return len(self._queue)

    def _drain(self) -> None:
        lower_thread_priority()
        while not self._stop.is_set():
            with self._lock:
                while not self._queue and self._status is None and not self._stop.is_set():
                    self._lock.wait(0.1)
                if self._stop.is_set():
                    return
                status, self._status = self._status, None
                frames = self._queue[0] if self._queue else None
            if status is not None:
                try:  # a snapshot: when it cannot go now, a newer one follows
                    self._socket.send_multipart(status, flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            if frames is None:
                continue
            try:
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:  # the learner is away or slow: keep the message, retry
                time.sleep(0.002)
                continue
            except zmq.ZMQError:
                return
            with self._lock:
                if self._queue and self._queue[0] is frames:
                    self._queue.popleft()
                    self.sent += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until the queue is empty; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.002)
        return not self._queue

    def close(self, linger: float = 2.0) -> None:
        """Stops the sender thread and closes the socket.

        Messages still in our queue are dropped (call :meth:`flush` first);
        those already handed to ZeroMQ get up to ``linger`` seconds to reach
        the learner (terminate the context to wait for them).
        """
        self._stop.set()
        with self._lock:
            self._lock.notify()
        self._thread.join(timeout=2)
        self._socket.close(int(linger * 1000))

    def stats(self) -> dict[str, int]:
        """Counters: sequence number, enqueued, sent, dropped, queue depth."""
        return {"seq": self.seq, "enqueued": self.enqueued, "sent": self.sent, "dropped": self.dropped, "queue_depth": self.depth}


#: The most messages one ``ExperienceReceiver.receive`` takes (the rest wait for the next call).
RECEIVE_MOST = 1000


class ExperienceReceiver:
    """Learner side of the experience channel: validates and accounts for every message.

    A message is checked in three stages, and a refusal at any of them is
    counted by reason (``refused``; per actor in the tracker's entries once
    the header could be read) and leaves nothing behind: its form (sizes,
    dtypes, shapes, finiteness: :func:`decode_experience`), its place in its
    actor's stream (duplicates, stale sessions, episode structure:
    :class:`SequenceTracker`) and the meaning of its values (``spec``: class
    indices, flags, action bounds, magnitudes).

    Args:
        address: where to bind, e.g. ``tcp://127.0.0.1:5555``.
        schema: ``{key: (dtype, shape)}`` every chunk must match (taken from
            ``spec`` when that is given).
        spec: what each value means; None checks the form only.
        limits: message size limits.
        max_actors: distinct actor ids accounted for; a new id beyond them
            evicts the one idle longest (see :class:`SequenceTracker`).
        seq_window: None when the senders are authenticated (CURVE); else the
            bound on sequence-number jumps (see :class:`SequenceTracker`).
    """

    def __init__(
        self,
        address: str,
        *,
        schema: dict[str, tuple[str, tuple[int, ...]]] | None = None,
        spec: StepSpec | None = None,
        limits: Limits = DEFAULT_LIMITS,
        max_actors: int = 4096,
        seq_window: int | None = None,
        context: zmq.Context | None = None,
        secure: Callable[[zmq.Socket], None] | None = None,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.spec = spec
        self.schema = spec.schema if spec is not None else schema
        self.limits, self.max_actors = limits, int(max_actors)
        self.tracker = SequenceTracker(window=seq_window, max_actors=self.max_actors)
        self.refused: collections.Counter = collections.Counter()
        #: why the newest refused message was refused (for the logs).
        self.last_error: str | None = None
        #: the newest status map of each actor, with ``received_at`` (wall clock) added; the idlest goes first when full.
        self.actor_status: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._socket = self.context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(limits))
        if secure is not None:
            secure(self._socket)
        self._socket.bind(address)
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def _validate(self, exp: Experience) -> None:
        if self.spec is not None:
            self.spec.check(exp.arrays)

    def receive(self, timeout: float = 0.0, max_messages: int = RECEIVE_MOST) -> list[Experience]:
        """Valid chunks that arrived within ``timeout`` seconds.

        A bad message never raises: it is counted in ``refused`` by reason
        and skipped. Only a socket error (a closed context) escapes.
        """
        out: list[Experience] = []
        if not self.wait(timeout):
            return out
        while len(out) < max_messages:
            try:
                frames = self._socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError:
                if out:  # already counted by the tracker: hand them over; the error returns on the next call
                    break
                raise
            try:
                if len(frames) == 1:  # status messages are one frame, experience at least two
                    actor, stats = decode_status(frames, limits=self.limits)
                    self.actor_status.pop(actor, None)
                    while len(self.actor_status) >= self.max_actors:
                        self.actor_status.popitem(last=False)
                    self.actor_status[actor] = {**stats, "received_at": time.time()}
                    continue
                exp = decode_experience(frames, limits=self.limits, schema=self.schema)
                accepted = self.tracker.accept(exp, self._validate)
            except ProtocolError as exc:
                self.refused[exc.reason] += 1
                self.last_error = str(exc)
                if exc.origin is not None:
                    self.tracker.refuse_arrival(*exc.origin, exc.reason, str(exc))
                continue
            except Exception as exc:  # decoding refuses with ProtocolError; this is the net under it
                self.refused["error"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            if accepted:
                out.append(exp)
            else:
                self.refused[self.tracker.reason] += 1
                self.last_error = f"message {exp.seq} of actor {exp.actor!r}: {self.tracker.detail}"
        return out

    def wait(self, timeout: float = 0.0) -> bool:
        """Whether a message is waiting, after up to ``timeout`` seconds (nothing is taken or counted)."""
        return bool(self._socket.poll(int(timeout * 1000)))

    def stats(self) -> dict[str, Any]:
        """Per-actor arrivals, missing and duplicates, and refusals by reason."""
        return {
            "actors": self.tracker.state(),
            "retired": dict(self.tracker.retired),
            "refused": dict(self.refused),
            "actor_status": dict(self.actor_status),
        }

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)


class WeightPublisher:
    """Learner side of the weight channel (PUB; slow actors get only the newest)."""

    def __init__(self, address: str, *, context: zmq.Context | None = None, secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self._socket = self.context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, 2)
        self._socket.setsockopt(zmq.LINGER, 0)
        if secure is not None:
            secure(self._socket)
        self._socket.bind(address)
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.version = -1
        self._last: tuple[int, bytes, dict] | None = None

    def publish(self, version: int, onnx_path: str | Path) -> None:
        """Publishes an exported policy (the ONNX file(s) and the sidecar; a two-part model's parts as one payload)."""
        import json

        sidecar = json.loads(sidecar_path(onnx_path).read_text())
        onnx_bytes = read_payload(onnx_path, sidecar)
        self._last = (int(version), onnx_bytes, sidecar)
        self.version = int(version)
        self.republish()

    def republish(self) -> None:
        """Sends the newest policy again (for actors that joined after it was published)."""
        if self._last is not None:
            version, onnx_bytes, sidecar = self._last
            self._socket.send_multipart(encode_weights(version=version, onnx_bytes=onnx_bytes, sidecar=sidecar))

    def close(self) -> None:
        """Closes the socket."""
        self._socket.close(0)


class WeightSubscriber:
    """Actor side of the weight channel: verifies and prepares new policies off the control thread.

    Args:
        address: the learner's weight address.
        on_policy: called (on the subscriber's thread) with ``(version,
            runtime)`` for each model that passed every check — typically
            ``loop.swap_policy`` after carrying the state over.
        build: makes a runtime from ``(onnx_bytes, sidecar)``; raising refuses it.
    """

    def __init__(
        self,
        address: str,
        on_policy: Callable[[int, Any], None],
        *,
        build: Callable[[bytes, dict], Any],
        context: zmq.Context | None = None,
        secure: Callable[[zmq.Socket], None] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.context = context or zmq.Context.instance()
        self.on_policy, self.build, self.limits = on_policy, build, limits
        self.version = -1
        self.accepted = self.repeats = self.reconnects = 0
        self._refused_model: tuple[int, Any] | None = None  # (version, sha256) of the last model build refused
        self.refused: collections.Counter = collections.Counter()
        self.last_error: str | None = None
        self.address, self._secure = address, secure
        self._socket, self._monitor = self._connect()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-subscriber", daemon=True)
        self._thread.start()

    def _connect(self) -> tuple[zmq.Socket, zmq.Socket]:
        """A connected SUB socket and the monitor of its disconnections."""
        socket = self.context.socket(zmq.SUB)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        socket.setsockopt(zmq.LINGER, 0)
        # An oversized model is cut off while it arrives instead of being buffered whole and refused after.
        # libzmq then drops the connection for good (a protocol error is not retried), so the
        # disconnections are watched and the subscriber connects again itself (_reconnect).
        socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(self.limits))
        # A fresh address each time: the default one is derived from a file descriptor, which the
        # socket this one replaces may have just released while its monitor endpoint is still bound.
        monitor = socket.get_monitor_socket(zmq.EVENT_DISCONNECTED, addr=f"inproc://weight-monitor-{id(self)}-{self.reconnects}")
        if self._secure is not None:
            self._secure(socket)
        socket.connect(self.address)
        return socket, monitor

    def _close_sockets(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)

    def _reconnect(self) -> None:
        # The learner went away (libzmq would retry by itself) or cut us off for an oversized
        # message (it would not): a new socket covers both. Not disconnect()/connect() on the
        # old one: that can expose the cut-off message's first frames to a read, and libzmq
        # 4.3.5 then aborts the process (Assertion failed: !_more, src/fq.cpp:80). A closed
        # socket is never read again; a whole policy it still held comes again with the
        # learner's next republication (every few seconds).
        self.reconnects += 1
        self.last_error = "the weight connection dropped (learner away, or a message over the size limit); reconnected"
        self._close_sockets()
        self._socket, self._monitor = self._connect()

    def _poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        return poller

    def _run(self) -> None:
        lower_thread_priority()
        poller = self._poller()
        while not self._stop.is_set():
            try:
                ready = dict(poller.poll(100))
                if self._monitor in ready:
                    self._reconnect()
                    poller = self._poller()  # the old sockets are closed
                    continue
            except zmq.ZMQError:
                return
            if self._socket not in ready:
                continue
            try:
                frames = self._socket.recv_multipart(copy=False)
            except zmq.ZMQError:
                return
            try:
                version, payload, sidecar = decode_weights(frames, limits=self.limits)
                if version == self.version:  # a republication of the policy we run
                    self.repeats += 1
                    continue
                if version < self.version:
                    raise ProtocolError("stale", f"version {version} is not newer than {self.version}")
                if (version, sidecar.get("sha256")) == self._refused_model:
                    # The learner republishes its newest policy every few seconds: a
                    # model refused once is not built again (a build stalls the loop).
                    self.repeats += 1
                    continue
                runtime = self.build(payload, sidecar)
            except ProtocolError as exc:
                self.refused[exc.reason] += 1
                self.last_error = str(exc)
                continue
            except Exception as exc:  # a model onnxruntime or the signature check refuses
                self.refused["model"] += 1
                self.last_error = str(exc)
                self._refused_model = (version, sidecar.get("sha256"))
                continue
            self.version = version
            self.accepted += 1
            self.on_policy(version, runtime)

    def close(self) -> None:
        """Stops the subscriber thread and closes the socket."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._close_sockets()
