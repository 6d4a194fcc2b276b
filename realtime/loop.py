"""The fixed-rate control loop: one policy step per tick, on schedule.

Ticks are scheduled at absolute times ``t0 + k·period`` (``t0`` is taken when
``run`` starts and again after every episode reset), so the time a step takes
never shifts later ticks. A tick that starts more than one period late skips
the slots it missed (counted in ``LoopStats.skipped``) instead of running them
in a burst.

One tick:

1. apply a policy queued by ``swap_policy`` (if any);
2. wait until the scheduled time, note the start (jitter = start − scheduled);
3. read the observation: ``robot.read_sensors()``, or for an environment the
   observation its previous ``step`` returned;
4. at ``is_last``: record the episode return, reset source and policy and
   restart the schedule (no action is sent for that observation);
5. otherwise run ``policy.step(obs)`` unless the observation has non-finite
   values, check the action, and measure the latency (start → action ready);
6. send the action: ``robot.send_command`` or ``env.step``. When the
   observation or the action was bad, the policy raised, or the action was
   ready after ``scheduled + deadline``, the safe action is sent instead and the
   reason is counted;
7. hand ``(obs, action sent, policy)`` to the optional recorder (at
   ``is_last``: ``(obs, None, policy)``), which streams experience;
8. before waiting for the next tick: apply a queued swap, and run the
   policy's ``advance()`` if it has one (a two-part ``PolicyRuntime``: the
   recurrent step that needs nothing from the next observation). Its time is
   measured apart (``LoopStats.advance_us``); an advance that ends after the
   next tick's scheduled start counts in ``advance_misses``. With ``spin_s``,
   a policy's ``warm_up()`` (if it has one) runs once more near the end of the
   spin, about twice its own duration before the tick, so that the step
   finds its weights in cache after the wait.

The safe action is ``'hold'`` (the last action sent in this episode; zeros
before the first), ``'zero'`` (zeros; for a discrete space the one-hot of
index 0, which is the no-op in Atari and most gymnasium discrete tasks), or a
fixed array.

A source that fails (a driver's ``read_sensors`` or ``send_command`` raising,
an observation whose ``reward`` or ``is_last`` is not a scalar, a simulator's
``step`` raising, e.g. on a non-finite observation) costs the tick: it is
counted in ``LoopStats.source_errors``, a robot gets the safe action, and an
environment starts a new episode (its state after a failed step is unknown).
Only ``max_source_errors`` failures in a row end ``run``, with a
``SourceError``; a robot is emergency-stopped first.

An emergency stop is not a failure to ride out: when the source (or the
policy) raises ``reverie.envs.robot.EmergencyStop``, or another thread calls
``ControlLoop.emergency_stop``, the loop calls the source's
``emergency_stop()``, sends nothing more (no safe action either: the robot's
stop is the safe state) and ``run`` returns before the next tick, with
``LoopStats.estops`` and ``estop_reason`` set. The robot stays latched; a
later ``run`` starts with a reset (which clears the latch).

A robot whose ``send_command`` returns an array (``SafeRobot``: the command
after its limits) has that array recorded and passed to the policy's
``action_sent`` as the action sent.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reverie.envs.base import Space, all_finite, zero_action
from reverie.envs.robot import EmergencyStop

Obs = dict[str, np.ndarray]

#: Reasons a tick sends the safe action (``TickRecord.reason``).
DEADLINE = "deadline"
EXCEPTION = "exception"
NONFINITE_OBS = "nonfinite_obs"
NONFINITE_ACTION = "nonfinite_action"
BAD_ACTION = "bad_action"
SOURCE_ERROR = "source_error"
SAFE_REASONS = (DEADLINE, EXCEPTION, NONFINITE_OBS, NONFINITE_ACTION, BAD_ACTION, SOURCE_ERROR)


class SourceError(RuntimeError):
    """The environment or robot failed ``max_source_errors`` times in a row."""


#: Tolerance (in periods) for comparing scheduled times with the end time.
_EPS = 1e-9
#: Slack kept between the end of the pre-tick warm and the tick (see ControlLoop._wait).
_WARM_MARGIN_S = 30e-6


@runtime_checkable
class Policy(Protocol):
    """What the loop drives: one control step per call.

    The policy keeps its own recurrent state (the carry). It reads
    ``obs['is_first']`` if it needs to know about episode starts, but the loop
    also calls ``reset`` before every episode. A policy may also define
    ``action_sent(action)``: the loop calls it after each send with the action
    actually sent (which differs from the policy's output after a safe action);
    and ``advance() -> bool``: work for its next step that needs no
    observation (a two-part ``PolicyRuntime``'s recurrent advance), which the
    loop runs before waiting for the next tick and times apart; it returns
    whether it did any work; and ``warm_up() -> bool``: a run that only loads
    the step's weights into cache, which a spinning loop calls just before
    the tick.
    """

    def reset(self) -> None:
        """Starts a new episode: clears the carry."""

    def step(self, obs: Obs) -> np.ndarray:
        """Maps one observation (the env contract's dict) to one action.

        Args:
            obs: sensor keys plus ``reward``, ``is_first``, ``is_last``,
                ``is_terminal``; all finite.

        Returns:
            The action, shaped like the action space: float32 ``(A,)`` in
            [-1, 1] or a one-hot ``(n,)``.
        """


class ZeroPolicy:
    """Always the neutral action (``zero_action``); for tests and benchmarks.

    Args:
        act_space: the action space.
    """

    def __init__(self, act_space: Space) -> None:
        self._action = zero_action(act_space)

    def reset(self) -> None:
        """Nothing to clear."""

    def step(self, obs: Obs) -> np.ndarray:
        """Returns a copy of the neutral action."""
        return self._action.copy()


class RandomPolicy:
    """Uniform random actions; for tests and benchmarks.

    Continuous: uniform in ``[low, high]`` (``[-1, 1]`` where a bound is
    missing or infinite). Discrete: a uniformly drawn one-hot.

    Args:
        act_space: the action space.
        seed: seed of the random stream (not reset by ``reset``).
    """

    def __init__(self, act_space: Space, seed: int = 0) -> None:
        self._space = act_space
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Nothing to clear."""

    def step(self, obs: Obs) -> np.ndarray:
        """Draws one action."""
        return self._space.sample(self._rng)


def _percentiles(values: array, prefix: str) -> dict[str, float]:
    data = np.frombuffer(values, np.float64) if len(values) else np.zeros(0)
    if data.size == 0:
        nan = float("nan")
        return {f"{prefix}_p50_us": nan, f"{prefix}_p99_us": nan, f"{prefix}_p999_us": nan, f"{prefix}_max_us": nan}
    p50, p99, p999 = np.percentile(data, [50, 99, 99.9])
    return {
        f"{prefix}_p50_us": float(p50),
        f"{prefix}_p99_us": float(p99),
        f"{prefix}_p999_us": float(p999),
        f"{prefix}_max_us": float(data.max()),
    }


@dataclasses.dataclass
class LoopStats:
    """What the loop measured; accumulated over every ``run`` call.

    ``latency_us`` and ``jitter_us`` hold one float64 per tick that sent an
    action (``array('d')``: 8 bytes a tick; ``np.frombuffer`` views it);
    ``advance_us`` one per advance that ran.

    Attributes:
        period_s: the tick period in seconds.
        deadline_s: the deadline after the scheduled start, in seconds.
        latency_us: per tick, start → action ready (observation read, checks,
            policy step), µs.
        jitter_us: per tick, actual start − scheduled start, µs.
        advance_us: per advance (two-part policies), its duration, µs.
        ticks: ticks that sent an action.
        skipped: schedule slots skipped because a tick started more than one
            period late.
        deadline_misses: ticks whose action was ready after the deadline.
        advance_misses: advances that ended after the next tick's scheduled
            start (the next step then waited for them).
        exceptions: policy steps that raised.
        nonfinite_obs: observations with NaN/inf (never passed to the policy).
        nonfinite_actions: actions with NaN/inf.
        bad_actions: actions of the wrong shape or not numeric.
        safe_actions: ticks that sent the safe action (any reason).
        swaps: policies swapped in by ``swap_policy``.
        recorder_errors: recorder calls that raised (the tick went on).
        source_errors: source calls that failed (reset, observation, send).
        estops: emergency stops (each ended a ``run``).
        estop_reason: what caused the last one.
        episode_returns: the return of each finished episode.
        last_error: ``repr`` of the last exception a policy, the recorder or the source raised.
    """

    period_s: float
    deadline_s: float
    latency_us: array = dataclasses.field(default_factory=lambda: array("d"))
    jitter_us: array = dataclasses.field(default_factory=lambda: array("d"))
    advance_us: array = dataclasses.field(default_factory=lambda: array("d"))
    ticks: int = 0
    skipped: int = 0
    deadline_misses: int = 0
    advance_misses: int = 0
    exceptions: int = 0
    nonfinite_obs: int = 0
    nonfinite_actions: int = 0
    bad_actions: int = 0
    safe_actions: int = 0
    swaps: int = 0
    recorder_errors: int = 0
    source_errors: int = 0
    estops: int = 0
    estop_reason: str | None = None
    episode_returns: list[float] = dataclasses.field(default_factory=list)
    last_error: str | None = None

    @property
    def episodes(self) -> int:
        """Finished episodes."""
        return len(self.episode_returns)

    def summary(self) -> dict[str, float | int]:
        """A flat, JSON-ready summary.

        Returns:
            Counts (``ticks``, ``skipped``, ``deadline_misses``, ``miss_rate``,
            ``advance_misses``, the fault counts, ``estops``, ``safe_actions``, ``swaps``,
            ``episodes``, ``mean_return``), ``period_us``, ``deadline_us``, and
            ``latency_{p50,p99,p999,max}_us`` / ``jitter_{...}_us`` /
            ``advance_{...}_us`` (NaN when none ran).
        """
        returns = self.episode_returns
        out: dict[str, float | int] = {
            "ticks": self.ticks,
            "skipped": self.skipped,
            "deadline_misses": self.deadline_misses,
            "miss_rate": self.deadline_misses / self.ticks if self.ticks else 0.0,
            "advance_misses": self.advance_misses,
            "exceptions": self.exceptions,
            "nonfinite_obs": self.nonfinite_obs,
            "nonfinite_actions": self.nonfinite_actions,
            "bad_actions": self.bad_actions,
            "safe_actions": self.safe_actions,
            "swaps": self.swaps,
            "recorder_errors": self.recorder_errors,
            "source_errors": self.source_errors,
            "estops": self.estops,
            "episodes": self.episodes,
            "mean_return": float(np.mean(returns)) if returns else float("nan"),
            "period_us": self.period_s * 1e6,
            "deadline_us": self.deadline_s * 1e6,
        }
        out.update(_percentiles(self.latency_us, "latency"))
        out.update(_percentiles(self.jitter_us, "jitter"))
        out.update(_percentiles(self.advance_us, "advance"))
        return out

    def histogram_png(self, path: str | Path, bins: int = 100) -> Path:
        """Writes a histogram of the tick latencies as a PNG.

        Linear latency axis, log-scaled count axis, vertical lines at p50, p99
        and the deadline. Uses matplotlib's Agg canvas directly (no pyplot, no
        global backend change).

        Args:
            path: the PNG file to write (parent folders are created).
            bins: number of histogram bins.

        Returns:
            The path written.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.frombuffer(self.latency_us, np.float64) if len(self.latency_us) else np.zeros(0)
        deadline_us = self.deadline_s * 1e6
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        top = max(float(data.max()) if data.size else 0.0, deadline_us) * 1.05
        if data.size:
            ax.hist(data, bins=np.linspace(0.0, top, bins + 1).tolist(), color="tab:blue", alpha=0.8)
            p50, p99 = np.percentile(data, [50, 99])
            ax.axvline(p50, color="tab:green", linestyle="--", label=f"p50 {p50:.0f} µs")
            ax.axvline(p99, color="tab:orange", linestyle="--", label=f"p99 {p99:.0f} µs")
        ax.axvline(deadline_us, color="tab:red", label=f"deadline {deadline_us:.0f} µs")
        ax.set_yscale("log")
        ax.set_xlim(0.0, top)
        ax.set_xlabel("tick latency (µs)")
        ax.set_ylabel("ticks")
        ax.set_title(f"{self.ticks} ticks at {1.0 / self.period_s:g} Hz: {self.deadline_misses} misses, {self.skipped} skipped")
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(path, format="png")
        return path


@dataclasses.dataclass(frozen=True)
class TickRecord:
    """The last tick that sent an action.

    Attributes:
        index: tick number (``LoopStats.ticks`` before this tick).
        scheduled: scheduled start, loop clock seconds.
        start: actual start, loop clock seconds.
        latency_s: start → action ready, seconds.
        action: the action sent.
        reason: why the safe action was sent (one of ``SAFE_REASONS``), or
            None when the policy's action was sent.
    """

    index: int
    scheduled: float
    start: float
    latency_s: float
    action: np.ndarray
    reason: str | None


class _EnvSource:
    """An environment seen as a loop source: the last ``step`` result is read."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.act_space: Space = env.act_space
        self._obs: Obs | None = None

    def reset(self) -> None:
        self._obs = self.env.reset()

    def observe(self) -> Obs:
        assert self._obs is not None, "reset() first"
        return self._obs

    def act(self, action: np.ndarray) -> None:
        self._obs = self.env.step(action)
        return None

    def emergency_stop(self) -> None:
        pass


class _RobotSource:
    """A robot seen as a loop source: sensors are read at every tick."""

    def __init__(self, robot: Any) -> None:
        self.robot = robot
        self.act_space: Space = robot.action_space

    def reset(self) -> None:
        self.robot.reset()

    def observe(self) -> Obs:
        return self.robot.read_sensors()

    def act(self, action: np.ndarray) -> np.ndarray | None:
        return self.robot.send_command(action)

    def emergency_stop(self) -> None:
        self.robot.emergency_stop()


def is_robot(source: Any) -> bool:
    """True when ``source`` looks like a ``reverie.envs.robot.Robot``."""
    return all(callable(getattr(source, name, None)) for name in ("read_sensors", "send_command", "emergency_stop"))


def _finite(obs: Obs) -> bool:
    """True when every floating array of ``obs`` (``log/`` keys aside) is finite."""
    for key, value in obs.items():
        if key.startswith("log/"):
            continue
        if not all_finite(np.asarray(value)):
            return False
    return True


def default_spin_s(rate_hz: float) -> float:
    """How long before each tick to busy-wait instead of sleeping: min(1.5 ms, 0.75 period).

    Sleep wake-ups on a VM can be over a millisecond late (docs/benchmarks.md,
    control loop); the spin makes the tick start on time.
    """
    return min(1.5e-3, 0.75 / rate_hz)


class ControlLoop:
    """Runs a policy against an environment or a robot at a fixed rate.

    The source is used directly: an object with ``read_sensors``,
    ``send_command`` and ``emergency_stop`` is driven as a robot (sensors read
    at each tick, ``action_space``), anything else as an environment
    (``reset``/``step``/``act_space``; the observation of a tick is the one the
    previous ``step`` returned, so the simulation runs inside the tick's send).

    Args:
        source: an ``Env`` (``reverie.envs.make``) or a ``Robot``.
        policy: the ``Policy`` to drive.
        rate_hz: ticks per second.
        safe_action: ``'hold'``, ``'zero'`` or a fixed action array (see the
            module docstring).
        clock: monotonic clock in seconds; default the robot's ``clock`` for a
            robot, else ``time.perf_counter``.
        sleep: sleeps a number of seconds; default ``time.sleep``. A fake
            clock needs a matching fake sleep (one that advances it).
        deadline: seconds after the scheduled start by which the action must
            be ready; default one period.
        spin_s: the last ``spin_s`` seconds before a tick are busy-waited
            instead of slept (lower jitter, one core busy); 0 sleeps only.
        pause_gc: keep Python's cyclic garbage collector off while running and
            collect between episodes instead (its pauses cause misses).
        recorder: optional object with ``record(obs, action, policy)``, called
            after each tick's action is sent and with ``action=None`` for the
            ``is_last`` observation; an exception it raises is counted, never
            fatal.
        max_source_errors: source failures in a row (see the module
            docstring) after which ``run`` gives up with ``SourceError``.

    Raises:
        ValueError: for a bad rate, deadline, safe action or error limit.
    """

    def __init__(
        self,
        source: Any,
        policy: Policy,
        *,
        rate_hz: float,
        safe_action: str | np.ndarray = "hold",
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        deadline: float | None = None,
        spin_s: float = 0.0,
        pause_gc: bool = True,
        recorder: Any = None,
        max_source_errors: int = 10,
    ) -> None:
        if max_source_errors < 1:
            raise ValueError(f"max_source_errors must be at least 1, got {max_source_errors}")
        self.max_source_errors = int(max_source_errors)
        self._source_errors_in_row = 0
        if not rate_hz > 0 or not math.isfinite(rate_hz):
            raise ValueError(f"rate_hz must be positive and finite, got {rate_hz}")
        self._robot = is_robot(source)
        self._source: _EnvSource | _RobotSource = _RobotSource(source) if self._robot else _EnvSource(source)
        self.source = source
        self.act_space: Space = self._source.act_space
        self.period = 1.0 / float(rate_hz)
        self.deadline = self.period if deadline is None else float(deadline)
        if not self.deadline > 0:
            raise ValueError(f"deadline must be positive, got {deadline}")
        if clock is None:
            clock = source.clock if self._robot and callable(getattr(source, "clock", None)) else time.perf_counter
        self._clock = clock
        self._sleep = time.sleep if sleep is None else sleep
        self._spin = max(0.0, float(spin_s))
        self._warm_s = 50e-6  # running estimate of the policy's warm_up() duration; see _wait
        self.pause_gc = pause_gc
        self.recorder = recorder
        self._zero = zero_action(self.act_space)
        self._safe_mode, self._safe_fixed = self._parse_safe(safe_action)
        self._policy = policy
        self._pending: Policy | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._estop: str | None = None
        self._running = False
        self._needs_reset = True
        self._t0 = 0.0
        self._k = 0
        self._return = 0.0
        self._last_sent: np.ndarray | None = None
        self.last_tick: TickRecord | None = None
        self.stats = LoopStats(self.period, self.deadline)

    def _parse_safe(self, safe_action: str | np.ndarray) -> tuple[str, np.ndarray | None]:
        if isinstance(safe_action, str):
            if safe_action not in ("hold", "zero"):
                raise ValueError(f"safe_action must be 'hold', 'zero' or an array, got {safe_action!r}")
            return safe_action, None
        fixed = np.asarray(safe_action, self.act_space.dtype)
        if fixed.shape != self.act_space.shape or not all_finite(fixed):
            raise ValueError(f"safe_action array must be finite with shape {self.act_space.shape}, got {fixed}")
        return "fixed", fixed

    @property
    def policy(self) -> Policy:
        """The policy that runs the next tick (a pending swap not yet applied)."""
        return self._policy

    def swap_policy(self, policy: Policy) -> None:
        """Queues ``policy`` to replace the current one at the start of the next tick.

        Safe to call from any thread, including from inside ``policy.step``.
        The tick in progress finishes with the old policy; a later call before
        that tick replaces the queued one. The new policy is not reset: when
        it has ``load_carry`` and is of the old policy's type, it continues
        the old one's episode (``new.load_carry(old)`` at the swap; a
        ``ValueError`` from it leaves the new policy's own state); otherwise
        its carry is its own business.

        Args:
            policy: the new policy.
        """
        with self._lock:
            self._pending = policy

    def stop(self) -> None:
        """Asks ``run`` to return before its next tick (from any thread)."""
        self._stop.set()

    def emergency_stop(self, reason: str = "requested") -> None:
        """Stops the robot now and ends ``run`` before its next tick (from any thread).

        The source's ``emergency_stop()`` runs in the calling thread (a
        ``Robot``'s may be called from any thread); a tick already past its
        send finishes, one before it sends nothing. Counted in ``estops``.
        """
        self._emergency(reason)

    def _emergency(self, reason: str) -> None:
        if self._estop is not None:  # already stopping (the stop latches; once is enough)
            return
        self._estop = reason
        self._stop.set()
        self.stats.estops += 1
        self.stats.estop_reason = reason
        self._needs_reset = True  # a later run starts a new episode: reset() clears the robot's latch
        try:
            self._source.emergency_stop()
        except Exception as err:  # noted; the loop stops sending either way
            self.stats.last_error = repr(err)

    @property
    def estopped(self) -> bool:
        """True from an emergency stop until the next ``run`` starts."""
        return self._estop is not None

    def safe_action(self) -> np.ndarray:
        """The action sent when a tick fails: see ``safe_action`` in the constructor."""
        if self._safe_mode == "hold" and self._last_sent is not None:
            return self._last_sent.copy()
        if self._safe_mode == "fixed":
            assert self._safe_fixed is not None
            return self._safe_fixed.copy()
        return self._zero.copy()

    def run(self, steps: int | None = None, seconds: float | None = None, episodes: int | None = None) -> LoopStats:
        """Runs ticks until one of the limits is reached (or ``stop`` is called).

        The source and the policy are reset before the first tick and after
        every ``is_last``; a later call goes on with the current episode
        (after the last episode ended, with a new one). Every call and every
        reset start a new schedule.

        Args:
            steps: ticks that send an action.
            seconds: loop-clock seconds from the first scheduled tick (after
                the first reset, if any); no tick is scheduled at or after
                ``start + seconds``.
            episodes: finished episodes.

        Returns:
            ``self.stats`` (accumulated over all calls).

        Raises:
            RuntimeError: when called while already running.
            SourceError: after ``max_source_errors`` source failures in a row
                (a robot is emergency-stopped first); an exception from the
                policy's ``reset`` or the clock ends ``run`` as it is.
        """
        if self._running:
            raise RuntimeError("ControlLoop.run is already running")
        self._running = True
        self._stop.clear()
        self._estop = None
        stats = self.stats
        # Python's cyclic garbage collector can pause for milliseconds at any
        # allocation; with pause_gc it runs only between episodes (where the
        # schedule restarts anyway), reference counting frees the rest.
        gc_was_enabled = gc.isenabled()
        if self.pause_gc:
            gc.disable()
        try:
            if self._needs_reset:
                self._begin_episode()
            start = self._clock()
            self._t0, self._k = start, 0
            end = math.inf if seconds is None else start + float(seconds)
            ticks0, episodes0 = stats.ticks, stats.episodes
            while not self._stop.is_set():
                if steps is not None and stats.ticks - ticks0 >= steps:
                    break
                if episodes is not None and stats.episodes - episodes0 >= episodes:
                    break
                if self._needs_reset:
                    # A reset may block (a robot homing): restart the schedule after it.
                    self._begin_episode()
                    if self._needs_reset:  # it failed (counted): try again
                        continue
                    self._t0, self._k = self._clock(), 0
                target = self._t0 + self._k * self.period
                if target >= end - _EPS * self.period:
                    break
                self._apply_swap()
                self._advance(target)
                now = self._wait(target)
                late = now - target
                if late > self.period:
                    missed = int(late // self.period)
                    if seconds is not None:
                        missed = min(missed, math.ceil((end - target) / self.period - _EPS))
                    stats.skipped += missed
                    self._k += missed
                    target = self._t0 + self._k * self.period
                    if target >= end - _EPS * self.period:
                        break
                if self._tick(target, now):
                    self._k += 1
        except BaseException:
            if self._robot:
                self._source.emergency_stop()
            raise
        finally:
            self._running = False
            if gc_was_enabled:
                gc.enable()
        return stats

    def _wait(self, target: float) -> float:
        """Sleeps (then spins, if configured) until ``target``; returns the clock."""
        now = self._clock()
        remaining = target - now
        if remaining <= 0:
            return now
        if self._spin > 0:
            if remaining > self._spin:
                self._sleep(remaining - self._spin)
            warm = getattr(self._policy, "warm_up", None)
            if warm is not None:
                # Warm as late as is safe: a wait of a millisecond or more lets the machine evict the weights.
                lead = min(self._spin, 2.0 * self._warm_s + _WARM_MARGIN_S)
                while (now := self._clock()) < target - lead:
                    pass
                if now < target:
                    self._warm(warm)
            while (now := self._clock()) < target:
                pass
            return now
        self._sleep(remaining)
        return self._clock()

    def _warm(self, warm: Callable[[], bool]) -> None:
        """Runs ``warm`` and keeps a running estimate of its duration (which sets how early it starts)."""
        start = self._clock()
        try:
            ran = warm()
        except Exception as err:  # only a cache warm-up: the step itself reports any real fault
            self.stats.exceptions += 1
            self.stats.last_error = repr(err)
            return
        if ran:
            self._warm_s += 0.1 * ((self._clock() - start) - self._warm_s)

    def _begin_episode(self) -> None:
        if self.pause_gc:
            gc.collect(1)
        try:
            self._source.reset()
        except Exception as err:
            self._source_failed(err)
            self._sleep(self.period)  # retried at the next loop turn, not in a tight loop
            return
        self._needs_reset = False
        self._policy.reset()
        self._return = 0.0
        self._last_sent = None

    def _advance(self, deadline: float) -> None:
        """Runs the policy's off-path work (``advance()``, two-part policies) before the wait for the tick at ``deadline``."""
        advance = getattr(self._policy, "advance", None)
        if advance is None:
            return
        start = self._clock()
        try:
            ran = advance()
        except Exception as err:  # the next step retries it (and fails into the safe action if it must)
            self.stats.exceptions += 1
            self.stats.last_error = repr(err)
            return
        if ran:
            end = self._clock()
            self.stats.advance_us.append((end - start) * 1e6)
            if end > deadline:
                self.stats.advance_misses += 1

    def _apply_swap(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            carry = getattr(pending, "load_carry", None)
            if carry is not None and type(pending) is type(self._policy):
                try:
                    carry(self._policy)  # the recurrent state carries over
                except ValueError:
                    pass
            self._policy = pending
            self.stats.swaps += 1

    def _tick(self, target: float, start: float) -> bool:
        """Runs one tick; returns False when it ended an episode instead."""
        stats = self.stats
        self._apply_swap()
        try:
            obs = self._source.observe()
            finite = _finite(obs)
            reward = float(np.asarray(obs.get("reward", 0.0)))  # raises unless a scalar
            last = bool(np.asarray(obs.get("is_last", False)))
        except EmergencyStop as err:
            self._emergency(f"read_sensors: {err}")
            return False
        except Exception as err:  # a driver failing, or a malformed observation
            self._source_failed(err)
            return self._send_safe(target, start)
        if math.isfinite(reward):
            self._return += reward
        if last:
            stats.episode_returns.append(self._return)
            self._needs_reset = True
            self._record(obs, None)
            return False

        reason: str | None = None
        action: np.ndarray | None = None
        if not finite:
            stats.nonfinite_obs += 1
            reason = NONFINITE_OBS
        else:
            try:
                raw = self._policy.step(obs)
            except EmergencyStop as err:
                self._emergency(f"policy: {err}")
                return False
            except Exception as err:  # any policy failure gives the safe action
                stats.exceptions += 1
                stats.last_error = repr(err)
                reason = EXCEPTION
            else:
                action, reason = self._check(raw)
        ready = self._clock()
        if ready - target > self.deadline:
            stats.deadline_misses += 1
            reason = reason or DEADLINE
        if self._estop is not None:  # stopped from another thread (or the policy) during this tick: send nothing
            return False
        if reason is not None or action is None:
            action = self.safe_action()
            stats.safe_actions += 1
        sent = self._send(action)
        if self._estop is not None:  # the send demanded the stop: nothing was sent
            return False
        self._account(target, start, ready, action if sent is None else sent, reason)
        if sent is None:
            return True
        self._source_errors_in_row = 0
        self._record(obs, sent)
        return True

    def _account(self, target: float, start: float, ready: float, action: np.ndarray, reason: str | None) -> None:
        stats = self.stats
        stats.latency_us.append((ready - start) * 1e6)
        stats.jitter_us.append((start - target) * 1e6)
        self.last_tick = TickRecord(stats.ticks, target, start, ready - start, action, reason)
        stats.ticks += 1

    def _send(self, action: np.ndarray) -> np.ndarray | None:
        """Sends ``action``; returns the action applied (what a limiting robot returned, else ``action``).

        None when the source failed (counted; an environment then starts a
        new episode) or demanded an emergency stop.
        """
        try:
            applied = self._source.act(action)
        except EmergencyStop as err:
            self._emergency(f"send_command: {err}")
            return None
        except Exception as err:
            self._source_failed(err)
            if not self._robot:
                self._needs_reset = True
            return None
        if isinstance(applied, np.ndarray) and applied.shape == action.shape:
            action = applied.astype(action.dtype, copy=False)
        self._last_sent = action
        # A recurrent policy conditions on its previous action: tell it what
        # was really sent (the safe action, after a miss). Optional hook.
        notify = getattr(self._policy, "action_sent", None)
        if notify is not None:
            try:
                notify(action)
            except Exception as err:
                self.stats.exceptions += 1
                self.stats.last_error = repr(err)
        return action

    def _send_safe(self, target: float, start: float) -> bool:
        """A tick without a usable observation: the safe action, counted."""
        action = self.safe_action()
        self.stats.safe_actions += 1
        sent = self._send(action)
        if self._estop is not None:
            return False
        self._account(target, start, self._clock(), action if sent is None else sent, SOURCE_ERROR)
        return True

    def _source_failed(self, err: Exception) -> None:
        """Counts a source failure; raises ``SourceError`` after ``max_source_errors`` in a row."""
        self.stats.source_errors += 1
        self.stats.last_error = repr(err)
        self._source_errors_in_row += 1
        if self._source_errors_in_row >= self.max_source_errors:
            raise SourceError(f"the source failed {self._source_errors_in_row} times in a row; last: {err!r}") from err

    def _record(self, obs: Obs, action: np.ndarray | None) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.record(obs, action, self._policy)
        except Exception as err:  # streaming must never stop the loop
            self.stats.recorder_errors += 1
            self.stats.last_error = repr(err)

    def _check(self, raw: Any) -> tuple[np.ndarray | None, str | None]:
        """Validates a policy output; returns (action, None) or (None, reason)."""
        space = self.act_space
        try:
            values = np.asarray(raw)
            if values.shape != space.shape or values.dtype.kind not in "biuf":
                raise ValueError
            action = values.astype(space.dtype)
        except (ValueError, TypeError):
            self.stats.bad_actions += 1
            return None, BAD_ACTION
        if not all_finite(action):
            self.stats.nonfinite_actions += 1
            return None, NONFINITE_ACTION
        if space.discrete:
            onehot = np.zeros(space.shape, space.dtype)
            onehot[int(np.argmax(action))] = 1
            return onehot, None
        low = -np.inf if space.low is None else space.low
        high = np.inf if space.high is None else space.high
        return np.clip(action, low, high).astype(space.dtype, copy=False), None


__all__ = [
    "BAD_ACTION",
    "DEADLINE",
    "EXCEPTION",
    "NONFINITE_ACTION",
    "NONFINITE_OBS",
    "SAFE_REASONS",
    "SOURCE_ERROR",
    "ControlLoop",
    "LoopStats",
    "Policy",
    "RandomPolicy",
    "SourceError",
    "TickRecord",
    "ZeroPolicy",
    "default_spin_s",
    "is_robot",
    "zero_action",
]
