"""Tests for reverie.realtime.loop: schedule, safe actions, stats, swaps.

Almost everything runs on a fake clock (time advances only when the loop
sleeps or a fake policy/env "works"), so the tests are exact and immune to
machine load. One short real-clock run checks the real path with loose bounds.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from reverie import envs
from reverie.envs.base import Space
from reverie.envs.fake import FakeClock
from reverie.realtime.loop import (
    BAD_ACTION,
    DEADLINE,
    EXCEPTION,
    NONFINITE_ACTION,
    NONFINITE_OBS,
    ControlLoop,
    Policy,
    RandomPolicy,
    SourceError,
    ZeroPolicy,
    zero_action,
)

# Robot side: runs in the robot-only install too (make test-robot).
pytestmark = pytest.mark.robot

PERIOD = 0.01  # 100 Hz
ACT = Space(np.float32, (2,), -1.0, 1.0)


class FakeEnv:
    """An env contract stand-in that records what it is sent.

    Observations: ``x`` float32 (3,) = [step, 0, 0], reward 1 per step.

    Args:
        clock: the fake clock (to time-stamp actions).
        act_space: the action space.
        length: steps per episode.
        nan_at: steps whose observation gets a NaN.
    """

    def __init__(self, clock: FakeClock, act_space: Space = ACT, length: int = 10_000, nan_at: tuple[int, ...] = ()) -> None:
        self.clock = clock
        self.act_space = act_space
        self.length = length
        self.nan_at = nan_at
        self.t = 0
        self.resets = 0
        self.sent: list[tuple[float, np.ndarray]] = []

    def reset(self) -> dict[str, np.ndarray]:
        self.resets += 1
        self.t = 0
        return self._obs(first=True)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        assert isinstance(action, np.ndarray) and action.dtype == self.act_space.dtype
        assert action.shape == self.act_space.shape
        self.sent.append((self.clock(), action.copy()))
        self.t += 1
        return self._obs(first=False)

    def close(self) -> None:
        pass

    def _obs(self, first: bool) -> dict[str, np.ndarray]:
        x = np.array([self.t, 0, 0], np.float32)
        if self.t in self.nan_at:
            x[1] = np.nan
        return {
            "x": x,
            "reward": np.array(0.0 if first else 1.0, np.float32),
            "is_first": np.array(first),
            "is_last": np.array(self.t >= self.length),
            "is_terminal": np.array(False),
        }


class ScriptedPolicy:
    """Returns ``value`` (float32 (2,)); ``cost`` advances the fake clock.

    ``script`` maps a call number to a behaviour: a float (extra cost in
    periods), an Exception (raised), or an array (returned instead).
    """

    def __init__(self, clock: FakeClock, value: float = 0.5, cost: float = 0.0, script: dict | None = None) -> None:
        self.clock = clock
        self.value = value
        self.cost = cost
        self.script = script or {}
        self.calls = 0
        self.resets = 0
        self.starts: list[float] = []
        self.seen: list[dict[str, np.ndarray]] = []

    def reset(self) -> None:
        self.resets += 1

    def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        n = self.calls
        self.calls += 1
        self.starts.append(self.clock())
        self.seen.append(obs)
        self.clock.advance(self.cost * PERIOD)
        todo = self.script.get(n)
        if isinstance(todo, Exception):
            raise todo
        if isinstance(todo, (int, float)):
            self.clock.advance(todo * PERIOD)
        if isinstance(todo, np.ndarray):
            return todo
        return np.full(2, self.value, np.float32)


def make_loop(policy: Policy, env: FakeEnv, clock: FakeClock, **kwargs) -> ControlLoop:
    return ControlLoop(env, policy, rate_hz=1.0 / PERIOD, clock=clock, sleep=clock.sleep, **kwargs)


def sent_actions(env: FakeEnv) -> np.ndarray:
    return np.stack([a for _, a in env.sent])


def test_policy_protocol_and_helpers() -> None:
    assert isinstance(ZeroPolicy(ACT), Policy)
    assert isinstance(RandomPolicy(ACT, seed=0), Policy)
    np.testing.assert_array_equal(ZeroPolicy(ACT).step({}), np.zeros(2, np.float32))
    disc = Space(np.float32, (4,), 0.0, 1.0, discrete=True)
    np.testing.assert_array_equal(zero_action(disc), [1, 0, 0, 0])
    a = RandomPolicy(ACT, seed=1).step({})
    assert a.dtype == np.float32 and a.shape == (2,) and np.all(np.abs(a) <= 1)
    onehot = RandomPolicy(disc, seed=1).step({})
    assert onehot.sum() == 1 and set(np.unique(onehot)) <= {0.0, 1.0}


def test_schedule_has_no_drift_with_slow_steps() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    policy = ScriptedPolicy(clock, cost=0.7)  # every step takes 0.7 periods
    loop = make_loop(policy, env, clock)
    t0 = clock()
    stats = loop.run(steps=1000)
    starts = np.array(policy.starts)
    np.testing.assert_allclose(starts - t0, np.arange(1000) * PERIOD, rtol=0, atol=1e-9)
    # Actions go out 0.7 periods into each tick, every tick.
    sends = np.array([t for t, _ in env.sent])
    np.testing.assert_allclose(sends - starts, 0.7 * PERIOD, rtol=0, atol=1e-9)
    assert stats.ticks == 1000 and stats.skipped == 0 and stats.deadline_misses == 0 and stats.safe_actions == 0
    np.testing.assert_allclose(np.frombuffer(stats.latency_us), 0.7 * PERIOD * 1e6, atol=1e-3)
    np.testing.assert_allclose(np.frombuffer(stats.jitter_us), 0.0, atol=1e-3)


def test_late_steps_are_counted_misses_with_the_safe_action() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    # Ticks 3 and 7 take 1.2 periods: past the deadline (one period).
    policy = ScriptedPolicy(clock, value=0.5, cost=0.1, script={3: 1.1, 7: 1.1})
    loop = make_loop(policy, env, clock, safe_action="zero")
    stats = loop.run(steps=10)
    actions = sent_actions(env)
    late = [3, 7]
    np.testing.assert_array_equal(actions[late], 0.0)
    np.testing.assert_array_equal(np.delete(actions, late, axis=0), 0.5)
    assert stats.deadline_misses == 2 and stats.safe_actions == 2 and stats.skipped == 0
    assert stats.ticks == 10
    # The tick after a late one starts late (0.2 periods) but stays on the grid after that.
    starts = np.array(policy.starts) - policy.starts[0]
    assert starts[4] == pytest.approx(4.2 * PERIOD) and starts[5] == pytest.approx(5 * PERIOD)
    summary = stats.summary()
    assert summary["deadline_misses"] == 2 and summary["miss_rate"] == pytest.approx(0.2)
    assert summary["latency_max_us"] == pytest.approx(1.2 * PERIOD * 1e6)


def test_custom_deadline() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    policy = ScriptedPolicy(clock, cost=0.6)
    loop = make_loop(policy, env, clock, deadline=0.5 * PERIOD)
    stats = loop.run(steps=5)
    assert stats.deadline_misses == 5 and loop.last_tick is not None and loop.last_tick.reason == DEADLINE


def test_far_behind_skips_ticks_instead_of_bursting() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    # Tick 2 takes 3.5 periods: slots 3 and 4 are missed, slot 5 runs 0.5 late.
    policy = ScriptedPolicy(clock, script={2: 3.5})
    loop = make_loop(policy, env, clock)
    t0 = clock()
    stats = loop.run(steps=6)
    starts = (np.array(policy.starts) - t0) / PERIOD
    np.testing.assert_allclose(starts, [0, 1, 2, 5.5, 6, 7], atol=1e-6)
    # Only tick 2 itself missed its deadline: slot 5 ran 0.5 periods late, within it.
    assert stats.skipped == 2 and stats.deadline_misses == 1 and stats.ticks == 6
    jitter = np.frombuffer(stats.jitter_us) / (PERIOD * 1e6)
    np.testing.assert_allclose(jitter, [0, 0, 0, 0.5, 0, 0], atol=1e-6)


def test_seconds_limit_counts_slots() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    policy = ScriptedPolicy(clock, script={10: 4.5})
    loop = make_loop(policy, env, clock)
    stats = loop.run(seconds=50 * PERIOD)
    # Tick 10 ends 4.5 periods after its slot: slots 11-13 are skipped.
    assert stats.ticks + stats.skipped == 50 and stats.skipped == 3


def test_policy_exception_gives_safe_action_and_count() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    policy = ScriptedPolicy(clock, value=0.25, script={2: RuntimeError("boom"), 5: RuntimeError("again")})
    loop = make_loop(policy, env, clock, safe_action="hold")
    stats = loop.run(steps=8)
    actions = sent_actions(env)
    np.testing.assert_array_equal(actions, 0.25)  # hold repeats the last action sent
    assert stats.exceptions == 2 and stats.safe_actions == 2 and stats.ticks == 8
    assert "again" in (stats.last_error or "")


def test_hold_before_any_action_is_zero_and_fixed_safe_action() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    policy = ScriptedPolicy(clock, script={0: ValueError("first")})
    stats = make_loop(policy, env, clock, safe_action="hold").run(steps=2)
    np.testing.assert_array_equal(sent_actions(env)[0], [0, 0])
    assert stats.exceptions == 1
    env2 = FakeEnv(clock)
    fixed = np.array([0.1, -0.2], np.float32)
    make_loop(ScriptedPolicy(clock, script={1: ValueError()}), env2, clock, safe_action=fixed).run(steps=3)
    np.testing.assert_array_equal(sent_actions(env2)[1], fixed)
    with pytest.raises(ValueError):
        make_loop(policy, env, clock, safe_action="brake")
    with pytest.raises(ValueError):
        make_loop(policy, env, clock, safe_action=np.zeros(3))


def test_bad_actions_are_replaced() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    script = {
        1: np.array([np.nan, 0.0], np.float32),
        2: np.zeros(3, np.float32),
        3: np.array(["a", "b"]),
        4: np.array([5.0, -5.0]),  # float64 out of range: cast and clipped
    }
    policy = ScriptedPolicy(clock, value=0.5, script=script)
    loop = make_loop(policy, env, clock, safe_action="zero")
    stats = loop.run(steps=6)
    actions = sent_actions(env)
    np.testing.assert_array_equal(actions[1:4], 0.0)
    np.testing.assert_array_equal(actions[4], [1.0, -1.0])
    assert actions.dtype == np.float32
    assert stats.nonfinite_actions == 1 and stats.bad_actions == 2 and stats.safe_actions == 3


def test_discrete_zero_safe_action_is_onehot_noop() -> None:
    clock = FakeClock()
    space = Space(np.float32, (3,), 0.0, 1.0, discrete=True)
    env = FakeEnv(clock, act_space=space)

    class Crashing:
        def reset(self) -> None:
            pass

        def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            if obs["x"][0] == 1:
                raise RuntimeError
            return np.array([0.1, 0.7, 0.2], np.float32)  # soft output: sent as one-hot

    stats = make_loop(Crashing(), env, clock, safe_action="zero").run(steps=3)
    np.testing.assert_array_equal(sent_actions(env), [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    assert stats.exceptions == 1


def test_nonfinite_observation_never_reaches_policy() -> None:
    clock = FakeClock()
    env = FakeEnv(clock, nan_at=(3, 4))
    policy = ScriptedPolicy(clock, value=0.5)
    loop = make_loop(policy, env, clock, safe_action="zero")
    stats = loop.run(steps=8)
    assert all(np.isfinite(obs["x"]).all() for obs in policy.seen)
    assert [int(obs["x"][0]) for obs in policy.seen] == [0, 1, 2, 5, 6, 7]
    actions = sent_actions(env)
    np.testing.assert_array_equal(actions[[3, 4]], 0.0)
    assert stats.nonfinite_obs == 2 and stats.safe_actions == 2 and stats.exceptions == 0


def test_nonfinite_observation_flag_on_last_tick() -> None:
    clock = FakeClock()
    env = FakeEnv(clock, nan_at=(2,))
    loop = make_loop(ScriptedPolicy(clock), env, clock)
    loop.run(steps=3)
    assert loop.last_tick is not None and loop.last_tick.reason == NONFINITE_OBS and loop.last_tick.index == 2


def test_episodes_reset_source_and_policy_and_record_returns() -> None:
    clock = FakeClock()
    env = FakeEnv(clock, length=5)
    policy = ScriptedPolicy(clock)
    loop = make_loop(policy, env, clock)
    stats = loop.run(episodes=3)
    assert stats.episodes == 3 and stats.episode_returns == [5.0, 5.0, 5.0]
    assert stats.ticks == 15 and env.resets == 3 and policy.resets == 3
    # The next run starts a fresh episode.
    loop.run(steps=1)
    assert env.resets == 4 and policy.resets == 4
    assert bool(policy.seen[-1]["is_first"])


def test_swap_policy_takes_effect_at_the_next_tick() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    new = ScriptedPolicy(clock, value=-0.5)
    loop: ControlLoop | None = None

    class Swapper(ScriptedPolicy):
        def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            if self.calls == 3:
                assert loop is not None
                loop.swap_policy(new)  # mid-tick: this tick still uses the old policy
            return super().step(obs)

    old = Swapper(clock, value=0.5)
    loop = make_loop(old, env, clock)
    stats = loop.run(steps=7)
    np.testing.assert_array_equal(sent_actions(env)[:, 0], [0.5] * 4 + [-0.5] * 3)
    assert stats.swaps == 1 and loop.policy is new and new.resets == 0 and old.calls == 4


def test_swap_policy_from_another_thread_real_clock() -> None:
    env = envs.make("fake/vector", length=10_000)
    used: list[float] = []
    ten_steps = threading.Event()
    loop: ControlLoop | None = None

    class Const:
        def __init__(self, value: float) -> None:
            self.value = value
            self.calls = 0

        def reset(self) -> None:
            pass

        def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            used.append(self.value)
            self.calls += 1
            if self.calls == 10:
                ten_steps.set()
                if self.value < 0:
                    assert loop is not None
                    loop.stop()
            return np.full(3, self.value, np.float32)

    def swap_later() -> None:
        ten_steps.wait(timeout=10)
        assert loop is not None
        loop.swap_policy(Const(-0.5))

    loop = ControlLoop(env, Const(0.5), rate_hz=500)
    thread = threading.Thread(target=swap_later)
    thread.start()
    stats = loop.run(seconds=10)  # the new policy stops the loop after 10 steps
    thread.join()
    assert stats.swaps == 1
    switches = int(np.count_nonzero(np.diff(used)))
    assert used[0] == 0.5 and used[-10:] == [-0.5] * 10 and switches == 1


def test_stop_from_another_thread() -> None:
    env = envs.make("fake/vector", length=10_000)
    loop = ControlLoop(env, ZeroPolicy(env.act_space), rate_hz=500)
    timer = threading.Timer(0.05, loop.stop)
    timer.start()
    started = time.perf_counter()
    loop.run()
    assert time.perf_counter() - started < 5.0
    timer.join()


def test_histogram_png(tmp_path) -> None:
    pytest.importorskip("matplotlib", reason="the robot-only install draws no histograms")
    clock = FakeClock()
    env = FakeEnv(clock)
    rng = np.random.default_rng(0)
    script = {i: float(c) for i, c in enumerate(rng.exponential(0.2, 300))}
    stats = make_loop(ScriptedPolicy(clock, script=script), env, clock).run(steps=300)
    path = stats.histogram_png(tmp_path / "plots" / "latency.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # An empty run still plots (just the deadline).
    empty = make_loop(ScriptedPolicy(clock), FakeEnv(clock), clock).stats
    assert empty.histogram_png(tmp_path / "empty.png").stat().st_size > 0


class TickingClock(FakeClock):
    """A fake clock that also moves 1 µs per reading, so that a busy-wait on it ends."""

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


def test_spinning_loop_warms_the_policy_just_before_each_tick() -> None:
    """With ``spin_s``, a policy's ``warm_up()`` runs once per wait, late in the spin, and ends before the tick;
    how early it starts follows its measured duration (about twice it, plus a margin)."""
    clock = TickingClock()
    warm_cost = 200e-6

    class Warmed(ScriptedPolicy):
        def __init__(self) -> None:
            super().__init__(clock)
            self.warms: list[tuple[float, float]] = []

        def warm_up(self) -> bool:
            start = clock()
            clock.advance(warm_cost)
            self.warms.append((start, clock()))
            return True

    policy = Warmed()
    spin = 2e-3
    stats = make_loop(policy, FakeEnv(clock), clock, spin_s=spin).run(steps=60)
    assert stats.ticks == 60 and stats.exceptions == 0 and stats.deadline_misses == 0
    # The first tick is due at once (no wait, no warm); every later one is preceded by exactly one warm.
    assert len(policy.warms) == 59
    for (start, end), tick in zip(policy.warms, policy.starts[1:]):
        assert tick - spin <= start and end < tick
    leads = [tick - start for (start, _), tick in zip(policy.warms, policy.starts[1:])]
    assert leads[0] < 2 * warm_cost  # from the initial 50 µs estimate
    assert leads[-1] == pytest.approx(2 * warm_cost + 30e-6, rel=0.05)  # learnt from the measured duration


def test_warm_that_raises_is_counted_and_the_tick_goes_on() -> None:
    clock = TickingClock()

    class Failing(ScriptedPolicy):
        def warm_up(self) -> bool:
            raise RuntimeError("cache warm failed")

    stats = make_loop(Failing(clock), FakeEnv(clock), clock, spin_s=2e-3).run(steps=5)
    assert stats.ticks == 5 and stats.exceptions == 4 and "cache warm failed" in stats.last_error


def test_real_clock_short_run() -> None:
    """0.5 s at 200 Hz on the real clock: 100 slots, each either run or skipped."""
    env = envs.make("fake/vector", length=10_000)
    loop = ControlLoop(env, RandomPolicy(env.act_space, seed=0), rate_hz=200)
    started = time.perf_counter()
    stats = loop.run(seconds=0.5)
    elapsed = time.perf_counter() - started
    assert stats.ticks + stats.skipped == 100
    assert stats.ticks >= 10  # a loaded machine may skip some, never most
    assert 0.45 < elapsed < 5.0
    summary = stats.summary()
    for key in ("latency_p50_us", "latency_p99_us", "latency_p999_us", "jitter_p50_us", "jitter_p99_us", "jitter_p999_us"):
        assert np.isfinite(summary[key]), key
    assert summary["latency_p50_us"] > 0 and summary["jitter_p50_us"] >= 0
    assert len(stats.latency_us) == len(stats.jitter_us) == stats.ticks


def test_env_step_failure_costs_the_episode_not_the_loop() -> None:
    """A simulator step that raises (e.g. a boundary check on a NaN observation) is counted and a new episode starts."""
    clock = FakeClock()

    class Broken(FakeEnv):
        def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
            if self.t == 2 and self.resets == 1:
                raise OSError("bus down")
            return super().step(action)

    env = Broken(clock)
    loop = make_loop(ScriptedPolicy(clock), env, clock)
    stats = loop.run(steps=6)
    assert stats.ticks == 6 and stats.source_errors == 1
    assert env.resets == 2  # the failed episode was abandoned, a new one started
    assert "bus down" in stats.last_error
    assert loop.last_tick is not None and loop.last_tick.reason is None


def test_persistent_source_failure_ends_run_with_source_error() -> None:
    clock = FakeClock()

    class Dead(FakeEnv):
        def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
            raise OSError("bus down")

    loop = make_loop(ScriptedPolicy(clock), Dead(clock), clock, max_source_errors=3)
    with pytest.raises(SourceError, match="3 times in a row"):
        loop.run(steps=10)
    assert loop.stats.source_errors == 3


def test_reset_failure_is_retried() -> None:
    clock = FakeClock()

    class FlakyReset(FakeEnv):
        def reset(self) -> dict[str, np.ndarray]:
            if self.resets < 2:
                self.resets += 1
                raise OSError("not homed yet")
            return super().reset()

    env = FlakyReset(clock)
    stats = make_loop(ScriptedPolicy(clock), env, clock).run(steps=3)
    assert stats.ticks == 3 and stats.source_errors == 2 and env.resets == 3


class FakeRobot(FakeEnv):
    """FakeEnv seen as a robot: sensors read each tick, ``fail_reads`` lists read numbers that raise."""

    def __init__(self, clock: FakeClock, fail_reads: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(clock, **kwargs)
        self.action_space = self.act_space
        self.fail_reads = fail_reads
        self.reads = 0
        self.stopped = 0
        self._current = self._obs(first=True)

    def reset(self) -> dict[str, np.ndarray]:
        self._current = super().reset()
        return self._current

    def read_sensors(self) -> dict[str, np.ndarray]:
        self.reads += 1
        if self.reads in self.fail_reads:
            raise OSError("sensor timeout")
        return self._current

    def send_command(self, action: np.ndarray) -> None:
        self._current = self.step(action)

    def emergency_stop(self) -> None:
        self.stopped += 1


def test_robot_sensor_failure_sends_the_safe_action() -> None:
    clock = FakeClock()
    robot = FakeRobot(clock, fail_reads=(3,))
    policy = ScriptedPolicy(clock, value=0.5)
    loop = make_loop(policy, robot, clock, safe_action="zero")
    stats = loop.run(steps=5)
    assert stats.ticks == 5 and stats.source_errors == 1 and stats.safe_actions == 1
    sent = sent_actions(robot)
    np.testing.assert_array_equal(sent[2], [0, 0])  # the third tick had no observation
    np.testing.assert_array_equal(sent[[0, 1, 3, 4]], np.full((4, 2), 0.5))
    assert policy.calls == 4 and robot.stopped == 0


def test_robot_dead_sensors_emergency_stop() -> None:
    clock = FakeClock()
    robot = FakeRobot(clock, fail_reads=tuple(range(2, 100)))
    loop = make_loop(ScriptedPolicy(clock), robot, clock, max_source_errors=4)
    with pytest.raises(SourceError):
        loop.run(steps=50)
    assert robot.stopped == 1 and loop.stats.source_errors == 4


@pytest.mark.parametrize("bad", [{"reward": np.ones(3, np.float32)}, {"reward": None}, {"is_last": np.array([True, False])}])
def test_malformed_basic_keys_are_a_source_error(bad: dict) -> None:
    clock = FakeClock()

    class Malformed(FakeEnv):
        def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
            obs = super().step(action)
            return {**obs, **bad} if self.t == 2 else obs

    loop = make_loop(ScriptedPolicy(clock), Malformed(clock), clock)
    stats = loop.run(steps=5)
    assert stats.ticks == 5 and stats.source_errors == 1 and stats.safe_actions == 1


def test_action_sent_hook_failure_is_counted() -> None:
    clock = FakeClock()

    class Picky(ScriptedPolicy):
        def action_sent(self, action: np.ndarray) -> None:
            raise ValueError("wrong size")

    stats = make_loop(Picky(clock), FakeEnv(clock), clock).run(steps=3)
    assert stats.ticks == 3 and stats.exceptions == 3 and "wrong size" in stats.last_error


def test_bad_arguments() -> None:
    clock = FakeClock()
    env = FakeEnv(clock)
    with pytest.raises(ValueError):
        ControlLoop(env, ZeroPolicy(ACT), rate_hz=0)
    with pytest.raises(ValueError):
        ControlLoop(env, ZeroPolicy(ACT), rate_hz=100, deadline=0)
    with pytest.raises(ValueError):
        ControlLoop(env, ZeroPolicy(ACT), rate_hz=100, max_source_errors=0)


def test_reasons_are_named() -> None:
    assert {DEADLINE, EXCEPTION, NONFINITE_OBS, NONFINITE_ACTION, BAD_ACTION} == {
        "deadline",
        "exception",
        "nonfinite_obs",
        "nonfinite_action",
        "bad_action",
    }


def test_all_finite_agrees_with_numpy_on_every_size_and_dtype() -> None:
    """The per-tick finiteness check (Python loop for small float arrays, numpy above) says what numpy says."""
    from reverie.envs.base import all_finite

    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32, np.float64, np.complex64, np.int32, np.uint8, np.bool_):
        for size in (0, 1, 5, 31, 32, 33, 200):
            for bad in (None, np.nan, np.inf, -np.inf):
                value = rng.standard_normal(size).astype(dtype)
                if bad is not None and size and np.dtype(dtype).kind in "fc":
                    value[rng.integers(size)] = bad
                expected = bool(np.isfinite(value).all()) if np.dtype(dtype).kind in "fc" else True
                assert all_finite(value) is expected, (dtype, size, bad)
                assert all_finite(value.reshape(1, -1)) is expected  # any shape
    assert all_finite(np.array(np.nan, np.float32)) is False and all_finite(np.float32(1.0)) is True  # 0-d and scalars
