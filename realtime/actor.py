"""``reverie actor``: the control loop next to an environment or robot, streaming to a learner.

The loop runs on the main thread at ``realtime.rate_hz``. Around it:

* an :class:`ExperienceRecorder` turns ticks into replay steps, and an
  :class:`ExperienceSender` thread streams them (bounded queue, drops counted);
* a :class:`WeightSubscriber` thread verifies each published policy, builds
  and warms up its onnxruntime session, and queues it for the loop, which
  swaps it in between two ticks with the recurrent state carried over;
* a status thread sends the actor's counters to the learner every
  ``realtime.status_every_s`` and writes them to ``logdir/actors/<id>/status.json``.

Until the first weights arrive the actor explores with uniform random actions,
or runs ``realtime.initial_policy`` (an exported policy, e.g. the one a
simulation run wrote) when given; either is policy version 0.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

if TYPE_CHECKING:  # only annotations: the CLI composes the config, this module needs no omegaconf of its own
    from omegaconf import DictConfig

from reverie import envs
from reverie.envs.base import all_finite

from .channels import ExperienceSender, WeightSubscriber, lower_thread_priority
from .endpoints import Endpoints, Security, endpoints
from .loop import ControlLoop, RandomPolicy, default_spin_s
from .recorder import ExperienceRecorder, experience_schema
from .runtime import PolicyRuntime
from .signature import write_payload
from .status import write_json_atomic

#: Python's GIL switch interval while the loop runs.
SWITCH_INTERVAL_S = 2e-4


#: Prefix of an actor's scratch folder; the creating process's pid follows it.
SCRATCH_PREFIX = "reverie-actor-"


def scratch_dir(root: Path | None = None) -> Path:
    """A new scratch folder for received models (in memory, /dev/shm, where there is one).

    Folders that actors killed with SIGKILL left behind (their pid, in the
    folder's name, no longer runs) are removed first, so killed actors do not
    fill /dev/shm one model at a time.
    """
    if root is None:
        shm = Path("/dev/shm")
        root = shm if shm.is_dir() else Path(tempfile.gettempdir())
    for old in root.glob(f"{SCRATCH_PREFIX}*-*"):
        pid = old.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


def _safety_requested(safety: Any) -> bool:
    return safety is not None and bool(safety.get("max_delta") or safety.get("low") or safety.get("high"))


def build_robot(cfg: DictConfig, seed: int) -> Any:
    """The actor's robot: the MuJoCo stand-in with ``realtime.robot_perturb``, behind ``realtime.safety``'s limits when set."""
    from reverie.envs.randomize import RandomizeSpec
    from reverie.envs.robot import MuJoCoRobot, SafeRobot

    rt = cfg.realtime
    robot: Any = MuJoCoRobot(cfg.env.name, obs=cfg.obs, seed=seed, perturb=RandomizeSpec.from_config(rt.get("robot_perturb")))
    safety = rt.get("safety")
    if _safety_requested(safety):
        try:
            robot = SafeRobot(robot, max_delta=safety.max_delta, low=list(safety.low) or None, high=list(safety.high) or None)
        except ValueError:
            robot.close()
            raise
    return robot


def actor_seed(cfg: DictConfig, actor_id: str) -> int:
    """A seed per actor id, so distinct actors see distinct episodes."""
    return int(cfg.seed) + 1 + zlib.crc32(actor_id.encode()) % 100_000


class Actor:
    """One actor process.

    Args:
        cfg: the composed config (``realtime.*`` for the loop and the channels).
        actor_id: overrides ``realtime.actor_id``.
        addresses: the learner's endpoints (default from the config).
    """

    def __init__(self, cfg: DictConfig, *, actor_id: str | None = None, addresses: Endpoints | None = None) -> None:
        rt = cfg.realtime
        self.cfg = cfg
        self.id = actor_id or rt.actor_id
        self.seed = actor_seed(cfg, self.id)
        self.dir = Path(cfg.logdir) / "actors" / self.id
        self.dir.mkdir(parents=True, exist_ok=True)
        # What is built is closed again if a later step fails (e.g. a bad realtime.initial_policy):
        # a refused start must not leave the robot, sockets or threads behind.
        with contextlib.ExitStack() as undo:
            if rt.robot:
                self.source: Any = build_robot(cfg, self.seed)
                obs_space, act_space = self.source.obs_space, self.source.action_space
                perturbation = getattr(self.source, "perturbation", {})
                undo.callback(self.source.close)
                write_json_atomic(self.dir / "robot.json", {"name": cfg.env.name, "seed": self.seed, "perturbation": perturbation})
            else:
                if _safety_requested(rt.get("safety")):
                    raise ValueError("realtime.safety limits a robot's commands: it needs realtime.robot=true")
                self.source = envs.from_config(cfg, self.seed)
                undo.callback(self.source.close)
                obs_space, act_space = self.source.obs_space, self.source.act_space
            self.obs_space, self.act_space = obs_space, act_space
            self.model_keys = envs.model_keys(obs_space)
            # Load onnxruntime's shared library now: on the weight thread, the
            # first import would hold the GIL for ~20 ms in the middle of the loop.
            import onnxruntime  # noqa: F401

            addresses = addresses or endpoints(cfg, bind=False)
            self.context = zmq.Context()
            undo.callback(self.context.term)  # last of all (callbacks run in reverse): after the sockets closed
            self.security = Security(cfg, self.context, server=False, name=self.id)
            undo.callback(self.security.stop)
            self.sender = ExperienceSender(
                addresses.experience, self.id, queue_size=rt.queue_size, context=self.context, secure=self.security()
            )
            undo.callback(self.sender.close)
            schema = experience_schema(obs_space, act_space, deter=cfg.size.deter, stoch=cfg.algo.rssm.stoch)
            self.recorder = ExperienceRecorder(self.sender.send, schema, chunk=rt.chunk, on_new_policy=self._first_use)
            initial: Any = RandomPolicy(act_space, seed=self.seed)
            if rt.get("initial_policy"):
                initial = self._initial_policy(Path(str(rt.initial_policy)))
            self.loop = ControlLoop(
                self.source,
                initial,
                rate_hz=rt.rate_hz,
                safe_action=rt.safe_action,
                spin_s=default_spin_s(rt.rate_hz),
                recorder=self.recorder,
            )
            self.swap_latency_ms: list[float] = []
            self._builds = 0
            self._scratch = scratch_dir()
            undo.callback(shutil.rmtree, self._scratch, ignore_errors=True)
            self.last_swap_wall: float | None = None
            self.subscriber = WeightSubscriber(
                addresses.weights, self._offer, build=self._build, context=self.context, secure=self.security()
            )
            undo.pop_all()  # built: close() owns all of it now
        self._stop = threading.Event()
        self._status_thread = threading.Thread(target=self._report, name="actor-status", daemon=True)

    # ------------------------------------------------------------- weights
    def _check_fits(self, sidecar: dict) -> None:
        """Raises ValueError unless a policy's sidecar fits this actor's observation keys and action space."""
        if list(sidecar.get("obs_keys", [])) != self.model_keys:
            raise ValueError(f"policy observes {sidecar.get('obs_keys')}, this actor has {self.model_keys}")
        action = sidecar.get("action", {})
        if action.get("dim") != int(np.prod(self.act_space.shape)) or bool(action.get("discrete")) != bool(self.act_space.discrete):
            raise ValueError(f"policy action {action} does not fit this actor's action space {self.act_space}")

    def _trial_step(self, runtime: PolicyRuntime) -> None:
        # The first run of a session allocates; do it here, off the control thread.
        zeros = {k: np.zeros(self.obs_space[k].shape, self.obs_space[k].dtype) for k in self.model_keys}
        if not all_finite(runtime.step(zeros)):  # e.g. weights that went NaN: keep the current policy
            raise ValueError("policy gives a non-finite action on a zero observation")
        runtime.reset()

    def _initial_policy(self, path: Path) -> PolicyRuntime:
        """``realtime.initial_policy``: an exported policy (e.g. the simulation run's ``policy.onnx``) run until the first weights arrive."""
        runtime = PolicyRuntime(path, threads=1, seed=self.seed)
        try:
            self._check_fits(runtime.meta)
            self._trial_step(runtime)
        except ValueError as exc:
            raise ValueError(f"realtime.initial_policy {path}: {exc}") from None
        return runtime  # version 0, published at 0.0: a local file

    def _build(self, payload: bytes | memoryview, sidecar: dict) -> PolicyRuntime:
        """Checks a published policy against this actor's spaces and prepares its session."""
        self._check_fits(sidecar)
        self._builds += 1
        # Through a file in memory (written without the GIL; onnxruntime reads
        # it itself): a copy of the model into a bytes object would hold the
        # GIL, and with it the control thread, for milliseconds.
        path = self._scratch / "received.onnx"
        write_payload(payload, sidecar, path)  # one file, or the two parts of a two-part model
        # decode_weights has checked the bytes against the header and sidecar hashes.
        runtime = PolicyRuntime(path, sidecar=sidecar, threads=1, seed=self.seed + self._builds, hash_checked=True)
        self._trial_step(runtime)
        runtime.published_at = float(sidecar.get("published_at", 0.0))
        return runtime

    def _offer(self, version: int, runtime: PolicyRuntime) -> None:
        runtime.version = version
        self.loop.swap_policy(runtime)

    def _first_use(self, version: int, policy: Any) -> None:
        published = getattr(policy, "published_at", 0.0)
        self.last_swap_wall = time.time()
        if published:
            self.swap_latency_ms.append((self.last_swap_wall - published) * 1e3)

    # -------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """The actor's counters: loop timing and faults, streaming and weights."""
        stats = self.loop.stats
        recent = np.frombuffer(stats.latency_us[-5000:], np.float64)  # a copy: the loop keeps appending
        advance = np.frombuffer(stats.advance_us[-5000:], np.float64)
        swaps = self.swap_latency_ms
        return {
            "actor": self.id,
            "ticks": stats.ticks,
            "episodes": stats.episodes,
            "last_return": stats.episode_returns[-1] if stats.episode_returns else None,
            "deadline_misses": stats.deadline_misses,
            "skipped": stats.skipped,
            "safe_actions": stats.safe_actions,
            "nonfinite_obs": stats.nonfinite_obs,
            "exceptions": stats.exceptions,
            "estops": stats.estops,
            "estop_reason": stats.estop_reason,
            "latency_p99_us": float(np.percentile(recent, 99)) if recent.size else None,
            "advances": len(stats.advance_us),
            "advance_misses": stats.advance_misses,
            "advance_p99_us": float(np.percentile(advance, 99)) if advance.size else None,
            "policy_version": int(getattr(self.loop.policy, "version", 0)),
            "swaps": stats.swaps,
            "swap_latency_ms_last": swaps[-1] if swaps else None,
            "swap_latency_ms_max": max(swaps) if swaps else None,
            "last_swap_time": self.last_swap_wall,
            "weights_accepted": self.subscriber.accepted,
            "weights_refused": sum(self.subscriber.refused.values()),
            "weights_last_error": (self.subscriber.last_error or "")[:200],
            "steps_recorded": self.recorder.steps,
            "steps_skipped": self.recorder.skipped,
            **{f"sender_{k}": v for k, v in self.sender.stats().items()},
            "session": self.sender.session,
            "time": time.time(),
        }

    def _report(self) -> None:
        lower_thread_priority()
        period = float(self.cfg.realtime.status_every_s)
        while not self._stop.wait(period):
            self._publish_status()

    def _publish_status(self) -> None:
        status = self.status()
        self.sender.send_status(status)
        write_json_atomic(self.dir / "status.json", status)

    # ----------------------------------------------------------------- run
    def run(self, *, seconds: float | None = None, steps: int | None = None, handle_signals: bool = True) -> dict[str, Any]:
        """Runs the loop until ``seconds``/``steps``, ``stop()`` or SIGINT/SIGTERM; returns the final status."""
        if handle_signals:
            self._install_signals()
        # The helper threads (weights, status, sender) hold the GIL in short
        # bursts; Python hands it over only every 5 ms by default, longer than
        # a 2 ms tick. A 0.2 ms interval bounds the wait of the control thread.
        previous = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._status_thread.start()
        self._raise_priority(int(self.cfg.realtime.priority))
        try:
            self.loop.run(seconds=seconds, steps=steps)
        finally:
            sys.setswitchinterval(previous)
            self.close()
        return self.status()

    def _raise_priority(self, priority: int) -> None:
        """Real-time scheduling for the control thread (the helper threads stay normal)."""
        if priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except (AttributeError, OSError) as exc:
            print(f"reverie actor: cannot use SCHED_FIFO priority {priority} ({exc}); running with normal scheduling", file=sys.stderr)

    def stop(self) -> None:
        """Ends ``run`` before the next tick (from any thread)."""
        self.loop.stop()

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.loop.stop())

    def close(self) -> None:
        """Sends what was recorded, the last status and the latency histogram; closes the sockets."""
        self._stop.set()
        self.recorder.flush()
        self.sender.flush(timeout=5.0)
        self._publish_status()
        self.sender.flush(timeout=1.0)
        write_json_atomic(self.dir / "loop.json", self.loop.stats.summary())
        try:
            self.loop.stats.histogram_png(self.dir / "latency.png")
        except Exception as exc:  # a missing plotting library must not skip the cleanup below
            print(f"actor {self.id}: no latency histogram ({exc!r})", file=sys.stderr)
        self.subscriber.close()
        self.sender.close()
        self.security.stop()
        shutil.rmtree(self._scratch, ignore_errors=True)
        if hasattr(self.source, "close"):
            self.source.close()
        self.context.term()


def run_actor(cfg: DictConfig, **kwargs: Any) -> dict[str, Any]:
    """Runs one actor (``reverie actor``) until stopped; returns its final status."""
    return Actor(cfg).run(**kwargs)
