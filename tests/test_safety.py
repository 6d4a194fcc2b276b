"""Safety around the robot: SafeRobot's bounds and rate limit, and the loop's emergency-stop path."""

from __future__ import annotations

import numpy as np
import pytest

from reverie.envs.base import Space, basic_spaces
from reverie.envs.fake import FakeClock
from reverie.envs.robot import EmergencyStop, Robot, SafeRobot
from reverie.realtime.loop import ControlLoop

# Robot side: runs in the robot-only install too (make test-robot).
pytestmark = pytest.mark.robot

PERIOD = 0.01
ACT = Space(np.float32, (2,), -1.0, 1.0)


class Driver:
    """A robot driver on a fake clock that records commands; ``estop_at`` raises EmergencyStop there.

    ``estop_at`` maps ``("read" | "send", n)`` (the n-th call, from 1) to raising.
    """

    def __init__(self, clock: FakeClock, estop_at: tuple[tuple[str, int], ...] = ()) -> None:
        self._clock = clock
        self.estop_at = set(estop_at)
        self.commands: list[np.ndarray] = []
        self.reads = self.sends = self.stops = self.resets = 0
        self.latched = False
        self.t = 0

    @property
    def obs_space(self):
        return {"x": Space(np.float32, (1,)), **basic_spaces()}

    @property
    def action_space(self):
        return ACT

    def clock(self) -> float:
        return self._clock()

    def reset(self) -> None:
        self.resets += 1
        self.latched = False
        self.t = 0

    def read_sensors(self):
        self.reads += 1
        if ("read", self.reads) in self.estop_at:
            raise EmergencyStop("e-stop button")
        first = self.t == 0
        self.t += 1
        return {
            "x": np.array([self.t], np.float32),
            "reward": np.float32(0),
            "is_first": np.array(first),
            "is_last": np.array(False),
            "is_terminal": np.array(False),
        }

    def send_command(self, action):
        self.sends += 1
        if ("send", self.sends) in self.estop_at:
            raise EmergencyStop("joint limit")
        if not self.latched:
            self.commands.append(np.array(action))

    def emergency_stop(self) -> None:
        self.stops += 1
        self.latched = True

    def close(self) -> None:
        pass


class Scripted:
    """Returns ``actions[i]`` at call i (the last one after the end); records what the loop said it sent."""

    def __init__(self, actions, on_step=None) -> None:
        self.actions = [np.asarray(a, np.float32) for a in actions]
        self.calls = 0
        self.sent: list[np.ndarray] = []
        self.on_step = on_step

    def reset(self) -> None:
        pass

    def step(self, obs):
        i = self.calls
        self.calls += 1
        if self.on_step is not None:
            self.on_step(i)
        return self.actions[min(i, len(self.actions) - 1)]

    def action_sent(self, action) -> None:
        self.sent.append(np.array(action))


class Recorder:
    def __init__(self) -> None:
        self.actions: list[np.ndarray | None] = []

    def record(self, obs, action, policy) -> None:
        self.actions.append(None if action is None else np.array(action))


def loop_for(robot, policy, clock, **kwargs) -> ControlLoop:
    return ControlLoop(robot, policy, rate_hz=1 / PERIOD, clock=clock, sleep=clock.sleep, **kwargs)


def test_rate_limit_and_bounds():
    clock = FakeClock()
    driver = Driver(clock)
    robot = SafeRobot(driver, max_delta=0.1, low=[-0.5, -1.0], high=[0.5, 0.25])
    assert isinstance(robot, Robot)
    robot.reset()
    wanted = [[1.0, 1.0]] * 7 + [[-1.0, -1.0]] * 3
    got = [robot.send_command(np.array(a, np.float32)) for a in wanted]
    expected = []
    prev = np.zeros(2)
    for a in wanted:
        target = np.clip(a, [-0.5, -1.0], [0.5, 0.25])
        prev = np.clip(prev + np.clip(target - prev, -0.1, 0.1), [-0.5, -1.0], [0.5, 0.25])
        expected.append(prev.copy())
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got[4], [0.5, 0.25], atol=1e-6)  # first dimension reached its bound after 5 ticks, second after 3
    np.testing.assert_allclose(driver.commands, got)  # the driver gets exactly the limited commands
    deltas = np.abs(np.diff(np.vstack([np.zeros(2), got]), axis=0))
    assert deltas.max() <= 0.1 + 1e-6  # never more than max_delta per tick, from zeros after reset
    assert robot.limited == len(wanted)
    robot.reset()  # after a reset the limit starts from zeros again
    np.testing.assert_allclose(robot.send_command(np.array([-1.0, -1.0], np.float32)), [-0.1, -0.1], atol=1e-6)


def test_limits_off_pass_commands_through():
    driver = Driver(FakeClock())
    robot = SafeRobot(driver)
    robot.reset()
    command = np.array([0.9, -0.7], np.float32)
    out = robot.send_command(command)
    np.testing.assert_array_equal(out, command)
    np.testing.assert_array_equal(driver.commands[0], command)
    assert robot.limited == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_delta": -0.1}, "max_delta"),
        ({"low": [0.5, 0.5], "high": [0.0, 1.0]}, "exceeds high"),
        ({"low": [0.1, 0.2, 0.3]}, "safety.low"),
        ({"high": 2.0}, "safety.high"),
    ],
)
def test_bad_limits_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SafeRobot(Driver(FakeClock()), **kwargs)


def test_the_loop_records_and_reports_the_limited_action():
    clock = FakeClock()
    driver = Driver(clock)
    policy = Scripted([[1.0, -1.0]])
    recorder = Recorder()
    stats = loop_for(SafeRobot(driver, max_delta=0.25), policy, clock, recorder=recorder).run(steps=3)
    assert stats.ticks == 3
    expected = [[0.25, -0.25], [0.5, -0.5], [0.75, -0.75]]
    np.testing.assert_allclose(driver.commands, expected)
    np.testing.assert_allclose(policy.sent, expected)  # the policy conditions on what the robot got
    np.testing.assert_allclose(recorder.actions, expected)  # and replay holds it


@pytest.mark.parametrize("where", [("read", 4), ("send", 4)])
def test_a_driver_raising_emergency_stop_ends_the_run_within_the_tick(where):
    clock = FakeClock()
    driver = Driver(clock, estop_at=(where,))
    recorder = Recorder()
    loop = loop_for(driver, Scripted([[0.5, 0.5]]), clock, recorder=recorder)
    stats = loop.run(steps=100)
    # Three ticks sent their action; the fourth raised: no command after it, the robot stopped once, run returned.
    assert stats.ticks == 3 and len(driver.commands) == 3 and driver.sends == (3 if where[0] == "read" else 4)
    assert driver.stops == 1 and stats.estops == 1 and loop.estopped
    assert stats.estop_reason == ("read_sensors: e-stop button" if where[0] == "read" else "send_command: joint limit")
    assert len(recorder.actions) == 3 and stats.safe_actions == 0 and stats.source_errors == 0
    assert stats.summary()["estops"] == 1
    # Running again is the deliberate restart: the robot is reset (its latch cleared) and the loop goes on.
    again = loop.run(steps=2)
    assert again.ticks == 5 and driver.resets == 2 and not loop.estopped and len(driver.commands) == 5


def test_emergency_stop_from_another_part_of_the_program_sends_nothing_more():
    clock = FakeClock()
    driver = Driver(clock)
    loop = None

    def press(i):
        if i == 2:  # e.g. an operator thread, here during the third policy step
            loop.emergency_stop("operator")

    loop = loop_for(driver, Scripted([[0.1, 0.1]], on_step=press), clock)
    stats = loop.run(steps=100)
    assert len(driver.commands) == 2 and driver.sends == 2 and driver.stops == 1
    assert stats.estops == 1 and stats.estop_reason == "operator" and stats.ticks == 2


def test_a_policy_raising_emergency_stop_stops_the_robot():
    clock = FakeClock()
    driver = Driver(clock)

    def trip(i):
        if i == 1:
            raise EmergencyStop("monitor: state out of range")

    stats = loop_for(driver, Scripted([[0.1, 0.1]], on_step=trip), clock).run(steps=10)
    assert stats.ticks == 1 and driver.stops == 1 and stats.estop_reason == "policy: monitor: state out of range"
