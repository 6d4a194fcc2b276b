"""``reverie learner``: trains from experience streamed by actors and publishes weights.

The learner composes the parts ``reverie train`` uses (the run's bookkeeping,
the train ratio and the updates: :mod:`reverie.agent.run`,
:mod:`reverie.agent.ratio`, :mod:`reverie.agent.updater`) with the network in
place of an environment. It builds no environment: the spaces come from the
checkpoint, from ``env.spaces`` (a file), or from the environment the config
names, read without stepping it (:func:`learner_spaces`).

* every valid chunk goes into the disk replay; a chunk that does not directly
  follow the previous one written (another actor, or a gap) starts with
  ``is_first`` so no sampled sequence runs across the seam;
* the train ratio is enforced here: each received step earns updates
  (:class:`~reverie.agent.ratio.TrainRatio`), and the learner waits for data
  when it has none left; it never blocks an actor;
* every ``realtime.publish_every`` updates it exports the sampling policy and
  publishes it (the newest is republished every few seconds for actors that
  join later); the version counter survives restarts (``policy_version`` file);
  an export that fails (e.g. NaN weights) is logged and counted, the actors
  keep the previous policy, and training goes on;
* every ``eval_every`` environment steps it writes the deterministic policy
  to ``eval/`` for an evaluator next to an environment (``reverie run``
  evaluates them; results in ``eval.jsonl``);
* a malformed message is refused and counted by the receiver; whatever ends
  the loop (``stop()``, a signal or an exception), the state is checkpointed
  on the way out unless the exception struck in the middle of changing it;
* checkpoints hold the per-actor stream accounting, so after a crash and a
  restart every transition is accounted for: received, or counted missing;
* status (counters of the learner and of each actor) goes to
  ``logdir/status.json`` and a REP socket that ``reverie status`` queries.

Under ``torchrun`` (data parallel) rank 0 alone has the sockets: each loop
iteration it sends what it received (and whether to stop) to the other
ranks, every rank stores the same steps and makes the same updates, each on
its own batch, and rank 0 alone publishes, logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import zmq
from omegaconf import DictConfig

from reverie.agent import checkpoint
from reverie.agent.distributed import RankLost, collective_failed, lost_rank_message
from reverie.agent.logger import MetricsLogger
from reverie.agent.parts import RunAccess, assemble_run
from reverie.agent.replay import write_text_atomic
from reverie.agent.run import MetricsWindow, RunBook
from reverie.agent.train import dream_report, export_metadata

from .channels import RECEIVE_MOST
from .endpoints import Endpoints
from .protocol import Experience
from .status import query_status  # noqa: F401  (re-exported: where callers used to find it)

#: Seconds between republications of the newest policy.
REPUBLISH_S = 2.0
VERSION_FILE = "policy_version"
#: The learner's own counters (checkpointed with the run's).
LEARNER_COUNTERS: dict[str, Any] = {
    "version": 0,
    "last_publish": 0,
    "publish_failures": 0,
    "tracker": {},
    "tracker_retired": {},
    "returns": {},
    "writer": None,
}


def learner_spaces(cfg: DictConfig, book: RunBook) -> tuple[dict, Any]:
    """The observation and action spaces of the learner's model, without an environment to step.

    In this order: the checkpoint's (a resumed run keeps its spaces, whatever
    is installed or configured now); the file ``env.spaces`` (written by
    ``reverie spaces`` where the environment or robot is: a learner on a
    machine without the simulator); else the spaces of the environment the
    config names, built and closed without a step (only that environment's
    package is needed).
    """
    spaces = book.spaces()
    if spaces is not None:
        return spaces
    if cfg.env.get("spaces"):
        from .spaces import read_spaces

        return read_spaces(cfg.env.spaces)
    from reverie import envs

    env = envs.from_config(cfg, cfg.seed)
    try:
        return env.obs_space, env.act_space
    finally:
        env.close()


class Learner(RunAccess):
    """The learner process (one rank of it under torchrun).

    Args:
        cfg: the composed config.
        addresses: where to bind (default from the config).
    """

    def __init__(self, cfg: DictConfig, *, addresses: Endpoints | None = None) -> None:
        self.cfg = cfg
        parts = assemble_run(cfg, lambda book: learner_spaces(cfg, book), counters=LEARNER_COUNTERS)
        self._adopt(parts)
        self.last_return: float | None = None
        self.last_publish_error: str | None = None
        # The longest chunk taken so far: the learner takes no more messages than the steps left can hold.
        self._longest_chunk = 0
        self._status: dict[str, Any] = {}
        self._stop = threading.Event()
        #: what the loop is changing (ingest, update) while it is; None between
        #: those steps, where the state is consistent and may be saved.
        self._changing: str | None = None
        self.context: zmq.Context | None = None
        if self.writer:
            self._open_sockets(addresses)

    def _open_sockets(self, addresses: Endpoints | None) -> None:
        from .channels import ExperienceReceiver, WeightPublisher
        from .endpoints import Security, endpoints

        version_file = self.logdir / VERSION_FILE
        if version_file.exists():  # published after the last checkpoint: never reuse a number
            self.counters["version"] = max(self.counters["version"], int(version_file.read_text() or 0))
        addresses = addresses or endpoints(self.cfg, bind=True)
        self.context = zmq.Context()
        self.security = Security(self.cfg, self.context, server=True)
        # Unauthenticated senders can forge the accounting fields: bound them (see SequenceTracker).
        window = None if self.security.enabled else int(self.cfg.realtime.seq_window)
        self.receiver = ExperienceReceiver(
            addresses.experience, spec=self.spec, seq_window=window, context=self.context, secure=self.security()
        )
        self.receiver.tracker.load_state(self.counters["tracker"], self.counters["tracker_retired"])
        self.publisher = WeightPublisher(addresses.weights, context=self.context, secure=self.security())
        self.addresses = addresses
        self._status_server = _StatusServer(self.context, addresses.status, lambda: self._status, self.security())

    # ----------------------------------------------------------- experience
    def can_train(self) -> bool:
        """Enough data, and updates owed by the train ratio."""
        return self.ratio.ready(len(self.replay)) and self.ratio.owed()

    def ingest(self, exp: Experience, logger: MetricsLogger | None = None) -> None:
        """Writes one accepted chunk into replay and accounts for its steps and episodes."""
        arrays = dict(exp.arrays)
        first = arrays["is_first"]
        follows = self.counters["writer"] == (exp.actor, exp.session, exp.seq - 1)
        if not follows and not first[0]:
            arrays["is_first"] = first.copy()
            arrays["is_first"][0] = True
        self.replay.extend(arrays)
        self.counters["writer"] = (exp.actor, exp.session, exp.seq)
        self._episode_returns(exp, follows, logger)
        self.counters["agent_steps"] += exp.steps
        self._longest_chunk = max(self._longest_chunk, exp.steps)
        self.ratio.earn(exp.steps, len(self.replay))

    def _episode_returns(self, exp: Experience, follows: bool, logger: MetricsLogger | None) -> None:
        # Per actor: the running return, or None when part of the episode is missing.
        returns = self.counters["returns"]
        key = exp.actor
        if not follows:
            returns[key] = None
        rewards, firsts, lasts = exp.arrays["reward"], exp.arrays["is_first"], exp.arrays["is_last"]
        base = self.counters["agent_steps"]
        for t in range(exp.steps):
            if firsts[t]:
                returns[key] = 0.0
            elif returns.get(key) is not None:
                returns[key] += float(rewards[t])
            if lasts[t]:
                self.counters["episodes"] += 1
                if returns.get(key) is not None:
                    self.last_return = returns[key]
                    if logger is not None:
                        step = (base + t + 1) * self.repeat
                        logger.write(step, {"episode/return": returns[key], "episode/policy": exp.policy, "time/wall_s": self.wall_s()})
                returns[key] = None

    # -------------------------------------------------------------- weights
    def export_metadata(self) -> dict[str, Any]:
        """What an exported policy's sidecar records about the run."""
        return export_metadata(self.cfg, self.env_steps)

    def publish(self) -> int:
        """Exports the sampling policy and publishes it as the next version (rank 0)."""
        from reverie.realtime.export import export_policy

        version = self.counters["version"] + 1
        # The number is on disk before anyone can see it: a restarted learner goes on after it.
        write_text_atomic(self.logdir / VERSION_FILE, str(version))
        path = self.logdir / "published" / "policy.onnx"
        meta = {**self.export_metadata(), "version": version, "updates": self.counters["updates"]}
        export_policy(self.agent, path, obs_space=self.obs_space, deterministic=False, metadata=meta)
        self.publisher.publish(version, path)
        self.counters["version"] = version
        self.counters["last_publish"] = self.counters["updates"]
        return version

    def _try_publish(self) -> int | None:
        """:meth:`publish` for the loop: a failure is logged and counted, not fatal.

        The actors keep the previously published policy (the publisher still
        republishes it, and the export left its files as they were); the next
        attempt comes ``publish_every`` updates later, so a model that cannot be
        exported does not cost an export per update.
        """
        try:
            return self.publish()
        except Exception as exc:
            self.counters["publish_failures"] += 1
            self.counters["last_publish"] = self.counters["updates"]
            self.last_publish_error = f"{type(exc).__name__}: {exc}"
            print(
                f"reverie learner: publishing policy version {self.counters['version'] + 1} failed ({self.last_publish_error[:500]});"
                f" actors keep version {self.counters['version']}, training goes on",
                file=sys.stderr,
            )
            return None

    def _maybe_export_eval(self, force: bool = False) -> None:
        """Every ``eval_every`` environment steps (and at the end), the deterministic policy for an evaluator."""
        cfg = self.cfg
        if not cfg.eval_episodes:
            return
        due = self.env_steps - self.counters["last_eval"] >= cfg.eval_every
        if not (due or (force and self.counters["last_eval"] != self.env_steps)):
            return
        self.counters["last_eval"] = self.env_steps
        from .outputs import export_for_evaluation

        try:
            export_for_evaluation(self.agent, cfg, self.obs_space, self.env_steps, wall_s=self.wall_s())
        except Exception as exc:  # as a failed publication: logged, training goes on
            print(f"reverie learner: the evaluation export at step {self.env_steps} failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    # --------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """Counters of the learner and, as last reported, of each actor."""
        stats = self.receiver.stats()
        return {
            "role": "learner",
            "ranks": self.book.world,
            "env_steps": self.env_steps,
            "agent_steps": self.counters["agent_steps"],
            "updates": self.counters["updates"],
            "policy_version": self.counters["version"],
            "publish_failures": self.counters["publish_failures"],
            "last_publish_error": self.last_publish_error,
            "replay_steps": len(self.replay),
            "train_ratio": self.ratio.achieved(),
            "episodes": self.counters["episodes"],
            "last_return": self.last_return,
            "received": stats["actors"],
            "retired_actors": stats["retired"],
            "refused": stats["refused"],
            "dropped_batches": self.counters["dropped_batches"],
            "quarantined_rows": self.replay.quarantined,
            "actors": stats["actor_status"],
            "steps_target": self.cfg.steps,
            "wall_s": self.wall_s(),
            "time": time.time(),
        }

    def _refresh_status(self) -> None:
        self._status = self.status()
        write_text_atomic(self.logdir / "status.json", json.dumps(self._status, default=str))

    # ----------------------------------------------------------------- loop
    def stop(self) -> None:
        """Asks ``run`` to finish (checkpoint, export) at the next iteration."""
        self._stop.set()

    @contextlib.contextmanager
    def _change(self, what: str) -> Iterator[None]:
        # Not reset when ``what`` raises: the state is then suspect and run() must not checkpoint it.
        self._changing = what
        yield
        self._changing = None

    def _save_on_exit(self, *, clean: bool) -> None:
        """Checkpoint at the end of ``run``; after an exception (``clean`` False) a failure to save is only logged."""
        if self._changing is not None:
            print(
                f"reverie learner: stopped in the middle of {self._changing}; the state may be half-updated,"
                " so it is not saved and the last checkpoint stays (what arrived since is counted missing after a restart)",
                file=sys.stderr,
            )
            return
        if self.parallel is not None and not clean:
            # A checkpoint is a collective: after an error the other ranks may be gone (or stuck in another one).
            print("reverie learner: a data-parallel job is not checkpointed after an error; the last checkpoint stays", file=sys.stderr)
            return
        try:
            self.save()
            if self.writer:
                self._refresh_status()
        except Exception as exc:
            if clean:
                raise
            print(f"reverie learner: the checkpoint on the way out failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    def _next(self) -> tuple[bool, list[Experience]]:
        """Rank 0: whether to stop, and what arrived (waiting a little when nothing is owed); sent to every rank."""
        plan: tuple[bool, list[Experience]] | None = None
        if self.writer:
            stop = self.env_steps >= self.cfg.steps or self._stop.is_set()
            received: list[Experience] = []
            if not stop and self.receiver.wait(timeout=0.0 if self.can_train() else 0.05):
                # receive() advances the stream accounting for the whole batch, so the state is
                # only consistent again once all of it is in replay (the ingest below).
                # Bad messages are refused and counted by receive() itself, never raised.
                self._changing = "taking in received messages"
                received = list(self.receiver.receive(max_messages=self._messages_left()))
            plan = (stop, received)
        if self.parallel is not None:
            plan = self.parallel.broadcast_object(plan)
        assert plan is not None  # rank 0 made the plan; the others received it
        return plan

    def _messages_left(self) -> int:
        """How many messages to take now so that ``steps`` is not overshot by more than one chunk.

        An actor keeps streaming while the learner is busy (its first, compiled
        update can take a minute), so a backlog of many chunks may be waiting;
        taken all at once it would carry the run far past ``steps``. Messages
        left in the socket when the run ends were never received, as those an
        actor sends after it.
        """
        if not self._longest_chunk:
            return 1
        steps_left = -(-(self.cfg.steps - self.env_steps) // self.repeat)
        return max(1, min(RECEIVE_MOST, steps_left // self._longest_chunk))

    def run(self, *, handle_signals: bool = True) -> dict[str, Any]:
        """Receives, trains and publishes until ``cfg.steps`` environment steps arrived or ``stop()``."""
        cfg, rt = self.cfg, self.cfg.realtime
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self.stop())
        logger = MetricsLogger(self.logdir, resume_step=self.env_steps) if self.writer else None
        self.book.start_clock()
        window = MetricsWindow(self.counters["updates"])
        next_status = next_republish = 0.0
        clean, self._changing = False, None
        try:
            if self.writer:
                self._status_server.start()
                self._try_publish()
            while True:
                stop, received = self._next()
                if stop:
                    break
                with self._change("taking in received messages"):
                    for exp in received:
                        self.ingest(exp, logger)
                if self.can_train():
                    with self._change("an update"):
                        window.add(self.update())
                    if self.writer and self.counters["updates"] - self.counters["last_publish"] >= rt.publish_every:
                        self._try_publish()
                if self.writer:
                    assert logger is not None  # the writer made one
                    now = time.time()
                    if now >= next_republish:
                        self.publisher.republish()
                        next_republish = now + REPUBLISH_S
                    if now >= next_status:
                        self._refresh_status()
                        next_status = now + rt.status_every_s
                    if self.env_steps - self.counters["last_log"] >= cfg.log_every:
                        self._log_window(logger, window)
                    self._maybe_export_eval()
                    self._maybe_report(logger)
                self._maybe_checkpoint()
            if self.writer and self.env_steps >= cfg.steps:
                self._maybe_export_eval(force=True)
            clean = True
        except RankLost:
            raise
        except Exception as exc:
            if self.parallel is not None and collective_failed(exc):
                raise RankLost(lost_rank_message(exc)) from exc
            raise
        finally:
            try:
                self._save_on_exit(clean=clean)
            finally:
                if logger is not None:
                    logger.close()
                self.close()
        if self.writer:
            from .outputs import finish_run

            finish_run(self.agent, cfg, self.obs_space, self.env_steps, title=f"{cfg.algo.name} {cfg.size.name} {cfg.env.name} (async)")
        return {
            "env_steps": self.env_steps,
            "updates": self.counters["updates"],
            "version": self.counters["version"],
            "wall_s": self.wall_s(),
        }

    def _log_window(self, logger: MetricsLogger, window: MetricsWindow) -> None:
        self.counters["last_log"] = self.env_steps
        summary, _ = window.close(self.counters["updates"])
        summary["train/replay_steps"] = len(self.replay)
        summary["realtime/policy_version"] = self.counters["version"]
        summary["realtime/publish_failures"] = self.counters["publish_failures"]
        summary["realtime/refused"] = sum(self.receiver.refused.values())
        summary["train/dropped_batches"] = self.counters["dropped_batches"]
        summary["replay/quarantined"] = self.replay.quarantined
        summary["realtime/train_ratio"] = self.ratio.achieved()
        summary["time/wall_s"] = self.wall_s()
        logger.write(self.env_steps, summary)

    def _maybe_report(self, logger: MetricsLogger) -> None:
        if not self.cfg.report_every or self.env_steps - self.counters["last_report"] < self.cfg.report_every:
            return
        self.counters["last_report"] = self.env_steps
        dream_report(self.agent, self.replay, self.cfg, self.env_steps, logger)

    def _maybe_checkpoint(self) -> None:
        if self.env_steps - self.counters["last_ckpt"] >= self.cfg.checkpoint_every:
            self.save()

    def save(self) -> None:
        """Checkpoint and replay with the stream accounting (every rank at the same update; rank 0 writes)."""
        if self.writer:
            self.counters["tracker"] = self.receiver.tracker.state()
            self.counters["tracker_retired"] = dict(self.receiver.tracker.retired)
        self.book.save(self.agent, self.replay, {"spaces": checkpoint.spaces_to_dict(self.obs_space, self.act_space)})

    def close(self) -> None:
        """Closes the sockets (idempotent)."""
        if self.context is None or self.context.closed:
            return
        self._status_server.stop()
        self.receiver.close()
        self.publisher.close()
        self.security.stop()
        self.context.term()


class _StatusServer(threading.Thread):
    """Answers every request on a REP socket with the latest status as JSON."""

    def __init__(self, context: zmq.Context, address: str, status: Any, secure: Any) -> None:
        super().__init__(name="learner-status", daemon=True)
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 4096)
        if secure is not None:
            secure(self._socket)
        self._socket.bind(address)
        self._status = status
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                if not self._socket.poll(100):
                    continue
                self._socket.recv(zmq.NOBLOCK)
                self._socket.send(json.dumps(self._status(), default=str).encode())
            except zmq.ZMQError:
                if self._halt.is_set():
                    return

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=1.0)
        self._socket.close(0)


def run_learner(cfg: DictConfig) -> dict[str, Any]:
    """Runs (or resumes) the learner of ``cfg`` until ``cfg.steps`` environment steps (one rank of it under torchrun)."""
    learner = Learner(cfg)
    try:
        return learner.run()
    finally:
        if learner.parallel is not None:
            learner.parallel.close()


__all__ = ["Learner", "query_status", "run_learner"]
