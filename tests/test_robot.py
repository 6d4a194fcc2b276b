"""Tests for reverie.envs.robot: MuJoCoRobot on an injected clock, and the loop on it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from reverie import envs
from reverie.envs.dmc import DMC
from reverie.envs.fake import FakeClock
from reverie.envs.robot import MuJoCoRobot, Robot
from reverie.realtime.loop import ControlLoop, RandomPolicy, ZeroPolicy

TASK = "dmc/cartpole_swingup"
DT = 0.01  # cartpole's physics timestep (= its control timestep)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def robot(clock: FakeClock):
    robot = MuJoCoRobot(TASK, seed=3, clock=clock)
    yield robot
    robot.close()


def reference(seed: int = 3) -> DMC:
    """The raw simulator the robot wraps, stepped the usual way."""
    env = DMC("cartpole_swingup", seed=seed)
    env.reset()
    return env


def cmd(value: float) -> np.ndarray:
    return np.array([value], np.float32)


def test_is_a_robot(robot: MuJoCoRobot) -> None:
    assert isinstance(robot, Robot)
    assert robot.timestep == pytest.approx(DT)
    assert robot.duration_s == pytest.approx(10.0)  # 1000 control steps
    assert robot.action_space == envs.Space(np.float32, (1,), -1.0, 1.0)


def test_clock_advance_integrates_whole_timesteps(robot: MuJoCoRobot, clock: FakeClock) -> None:
    robot.reset()
    robot.read_sensors()  # starts the episode clock
    physics = robot.sim.physics
    total = 0
    for k in (1, 3, 7, 2):
        clock.advance(k * DT)
        robot.read_sensors()
        total += k
        assert robot.sim_steps == total
        assert physics.data.time == pytest.approx(total * DT)
    # Below one timestep nothing happens; the remainder carries over.
    clock.advance(0.6 * DT)
    robot.read_sensors()
    assert robot.sim_steps == total
    clock.advance(0.6 * DT)
    robot.read_sensors()
    assert robot.sim_steps == total + 1


def test_time_before_the_first_read_does_not_count(robot: MuJoCoRobot, clock: FakeClock) -> None:
    robot.reset()
    clock.advance(5 * DT)
    first = robot.read_sensors()
    assert robot.sim_steps == 0 and bool(first["is_first"]) and float(first["reward"]) == 0.0
    start = DMC("cartpole_swingup", seed=3).reset()  # the state right after reset
    np.testing.assert_array_equal(first["position"], start["position"])
    np.testing.assert_array_equal(first["velocity"], start["velocity"])


def test_zero_order_hold_matches_stepping(robot: MuJoCoRobot, clock: FakeClock) -> None:
    robot.reset()
    robot.read_sensors()
    robot.send_command(cmd(0.8))
    clock.advance(3 * DT)
    robot.send_command(cmd(-0.4))  # the first 3 steps ran under 0.8
    clock.advance(2 * DT)
    obs = robot.read_sensors()
    assert robot.sim_steps == 5

    ref = reference()
    rewards = 0.0
    for value in (0.8, 0.8, 0.8, -0.4, -0.4):
        ref_obs = ref.step(cmd(value))
        rewards += float(ref_obs["reward"])
    for key in ("position", "velocity"):
        np.testing.assert_allclose(obs[key], ref_obs[key], rtol=0, atol=1e-6)
    assert float(obs["reward"]) == pytest.approx(rewards, rel=1e-5)  # summed over the 5 steps
    assert not bool(obs["is_first"])


def test_late_read_integrates_more_steps(robot: MuJoCoRobot, clock: FakeClock) -> None:
    robot.reset()
    robot.read_sensors()
    robot.send_command(cmd(1.0))
    clock.advance(DT)
    on_time = robot.read_sensors()
    clock.advance(4 * DT)  # this read is 3 timesteps late
    late = robot.read_sensors()
    assert robot.sim_steps == 5
    ref = reference()
    for _ in range(5):
        ref_obs = ref.step(cmd(1.0))
    np.testing.assert_allclose(late["velocity"], ref_obs["velocity"], atol=1e-6)
    assert not np.allclose(late["velocity"], on_time["velocity"])


def test_emergency_stop_zeros_and_latches(robot: MuJoCoRobot, clock: FakeClock) -> None:
    robot.reset()
    robot.read_sensors()
    robot.send_command(cmd(1.0))
    clock.advance(2 * DT)
    robot.emergency_stop()  # the 2 steps so far ran under 1.0
    assert robot.estopped
    np.testing.assert_array_equal(robot.command, [0.0])
    np.testing.assert_array_equal(robot.raw_command, [0.0])
    robot.send_command(cmd(1.0))  # ignored while latched
    np.testing.assert_array_equal(robot.command, [0.0])
    clock.advance(3 * DT)
    obs = robot.read_sensors()
    ref = reference()
    for value in (1.0, 1.0, 0.0, 0.0, 0.0):
        ref_obs = ref.step(cmd(value))
    np.testing.assert_allclose(obs["position"], ref_obs["position"], atol=1e-6)
    robot.reset()
    assert not robot.estopped
    robot.read_sensors()
    robot.send_command(cmd(0.5))
    np.testing.assert_array_equal(robot.command, [0.5])


def test_observations_follow_the_contract(robot: MuJoCoRobot, clock: FakeClock) -> None:
    space = robot.obs_space
    assert space == envs.make(TASK).obs_space
    robot.reset()
    rng = np.random.default_rng(0)
    for i in range(5):
        obs = robot.read_sensors()
        assert set(obs) == set(space)
        for key, sp in space.items():
            assert isinstance(obs[key], np.ndarray), key
            assert obs[key].dtype == sp.dtype and obs[key].shape == sp.shape, key
            if obs[key].dtype.kind == "f":
                assert np.isfinite(obs[key]).all(), key
        assert bool(obs["is_first"]) == (i == 0)
        robot.send_command(rng.uniform(-1, 1, 1).astype(np.float32))
        clock.advance(DT)


def test_is_last_after_the_duration(clock: FakeClock) -> None:
    robot = MuJoCoRobot(TASK, clock=clock, duration_s=0.05)
    robot.reset()
    robot.read_sensors()
    clock.advance(3 * DT)
    assert not bool(robot.read_sensors()["is_last"])
    clock.advance(10 * DT)  # well past the end: only the remaining 2 steps run
    obs = robot.read_sensors()
    assert bool(obs["is_last"]) and not bool(obs["is_terminal"]) and robot.sim_steps == 5
    clock.advance(10 * DT)
    assert bool(robot.read_sensors()["is_last"]) and robot.sim_steps == 5
    robot.reset()
    assert not bool(robot.read_sensors()["is_last"]) and robot.sim_steps == 0
    robot.close()


def test_errors(robot: MuJoCoRobot) -> None:
    with pytest.raises(RuntimeError):
        robot.read_sensors()
    robot.reset()
    with pytest.raises(ValueError):
        robot.send_command(np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        robot.send_command(np.array([np.nan], np.float32))
    with pytest.raises(ValueError):
        MuJoCoRobot("fake/vector")
    with pytest.raises(ValueError):
        MuJoCoRobot("gym/CartPole-v1")  # discrete actions


def test_gym_robot_steps_in_env_dt(clock: FakeClock) -> None:
    robot = MuJoCoRobot("gym/Hopper-v5", clock=clock)
    assert robot.obs_space == envs.make("gym/Hopper-v5").obs_space
    assert robot.timestep == pytest.approx(0.008)
    robot.reset()
    robot.read_sensors()
    clock.advance(4 * robot.timestep)
    obs = robot.read_sensors()
    assert robot.sim_steps == 4 and float(obs["reward"]) > 0
    robot.close()


def test_control_loop_drives_the_robot(clock: FakeClock) -> None:
    robot = MuJoCoRobot(TASK, clock=clock, duration_s=0.1)

    class Slow(RandomPolicy):
        def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            clock.advance(0.3 * DT)  # latency: commands land 0.3 timesteps into a tick
            return super().step(obs)

    # The loop takes the robot's clock; the sleep must advance the same fake clock.
    loop = ControlLoop(robot, Slow(robot.action_space, seed=0), rate_hz=1.0 / DT, sleep=clock.sleep)
    stats = loop.run(steps=5)
    assert stats.ticks == 5 and stats.safe_actions == 0 and stats.skipped == 0
    assert robot.sim_steps == 4  # the first read starts the episode clock
    stats = loop.run(episodes=2)
    # The second run's schedule starts 0.3 timesteps off the first one's grid, so
    # the first episode (10 timesteps) reads steps 4..9 once more each: 6 ticks.
    # The second episode starts on a fresh schedule: exactly 10 ticks.
    assert stats.episodes == 2 and stats.ticks == 5 + 6 + 10
    assert all(np.isfinite(stats.episode_returns))
    robot.close()


def test_interrupt_emergency_stops_the_robot(clock: FakeClock) -> None:
    robot = MuJoCoRobot(TASK, clock=clock)

    class Interrupted(ZeroPolicy):
        def step(self, obs: dict[str, np.ndarray]) -> np.ndarray:
            raise KeyboardInterrupt  # not an Exception: ends the run

    loop = ControlLoop(robot, Interrupted(robot.action_space), rate_hz=100, sleep=clock.sleep)
    with pytest.raises(KeyboardInterrupt):
        loop.run(steps=3)
    assert robot.estopped
    robot.close()


def test_control_loop_real_clock_robot() -> None:
    robot = MuJoCoRobot(TASK)
    loop = ControlLoop(robot, ZeroPolicy(robot.action_space), rate_hz=100)
    started = time.perf_counter()
    stats = loop.run(seconds=0.3)
    elapsed = time.perf_counter() - started
    assert stats.ticks + stats.skipped == 30 and stats.ticks >= 3
    # Simulated time follows the wall clock: never ahead of it.
    assert 0 < robot.sim_time <= elapsed + DT
    robot.close()


# -- the reality gap (realtime.robot_perturb) ---------------------------------------


def drive(robot: MuJoCoRobot, clock: FakeClock, values) -> dict[str, np.ndarray]:
    """From reset: one command per timestep; returns the last observation."""
    robot.reset()
    obs = robot.read_sensors()
    for value in values:
        robot.send_command(cmd(value))
        clock.advance(DT)
        obs = robot.read_sensors()
    return obs


def test_perturbed_robot_has_fixed_physics_that_differ_from_the_simulator(clock: FakeClock) -> None:
    from reverie.envs.randomize import RandomizeSpec, mujoco_model

    spec = RandomizeSpec(mass=(1.5, 1.5), damping=(0.5, 2.0), gain=(0.7, 0.7))
    robot = MuJoCoRobot(TASK, seed=3, clock=clock, perturb=spec)
    nominal = mujoco_model(DMC("cartpole_swingup", seed=3))
    model = mujoco_model(robot.sim)
    np.testing.assert_allclose(model.body_mass, 1.5 * nominal.body_mass)
    np.testing.assert_allclose(model.actuator_gainprm[:, 0], 0.7 * nominal.actuator_gainprm[:, 0])
    damping = model.dof_damping / nominal.dof_damping
    assert np.all((damping >= 0.5) & (damping <= 2.0)) and not np.allclose(damping, 1.0)
    assert robot.perturbation["mass/cart"] == pytest.approx(1.5) and robot.perturbation["damping/slider"] == pytest.approx(damping[0])
    before = model.dof_damping.copy()
    plain = MuJoCoRobot(TASK, seed=3, clock=clock)
    values = [1.0] * 20 + [-1.0] * 20
    perturbed_obs = drive(robot, clock, values)
    np.testing.assert_array_equal(model.dof_damping, before)  # kept across resets: one robot, one set of physics
    plain_obs = drive(plain, clock, values)
    assert not np.allclose(perturbed_obs["position"], plain_obs["position"], atol=1e-3)
    again = MuJoCoRobot(TASK, seed=3, clock=clock, perturb=spec)  # same seed: the same robot
    np.testing.assert_array_equal(mujoco_model(again.sim).dof_damping, before)
    for r in (robot, plain, again):
        r.close()


def test_perturbed_robot_sensor_bias_and_command_delay(clock: FakeClock) -> None:
    from reverie.envs.randomize import RandomizeSpec

    robot = MuJoCoRobot(TASK, seed=3, clock=clock, perturb=RandomizeSpec(obs_bias=(0.1, 0.1), act_delay=2))
    robot.reset()
    first = robot.read_sensors()
    start = DMC("cartpole_swingup", seed=3).reset()
    np.testing.assert_allclose(first["position"], start["position"] + 0.1, atol=1e-6)
    applied = []
    for value in (0.3, 0.6, 0.9, -0.2):
        robot.send_command(cmd(value))
        applied.append(float(robot.command[0]))
    assert applied == pytest.approx([0.0, 0.0, 0.3, 0.6])  # the command sent two commands ago; zeros first
    robot.reset()
    robot.read_sensors()
    robot.send_command(cmd(0.5))
    assert float(robot.command[0]) == 0.0  # a reset empties the delay line
    robot.close()
