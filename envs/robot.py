"""The robot interface, and ``MuJoCoRobot``: a simulator that keeps wall-clock time.

A ``Robot`` is what a hardware driver implements for the control loop
(``reverie.realtime.loop.ControlLoop`` drives one directly). Its observations
and actions follow the env contract (``envs/base.py``): ``read_sensors``
returns the sensor keys plus ``reward`` (float32), ``is_first``, ``is_last``,
``is_terminal`` (bool), and commands are float32 ``(A,)`` in [-1, 1] (or a
one-hot ``(n,)``); the driver maps them to its actuators' units.

``MuJoCoRobot`` stands in for hardware: its physics advances with its clock,
not with the calls. Each ``read_sensors``/``send_command`` first integrates the
physics up to now, in whole physics timesteps, under the command that was
active during that time (zero-order hold). A command that arrives late is
applied late, so latency costs control quality as it would on a real robot.
Given a ``RandomizeSpec`` (``perturb``) it also differs from the simulator the
policy was trained in: physics factors drawn once and kept, sensor noise,
bias and dropout, command noise and delay (the "reality gap").

``SafeRobot`` puts command limits (per-joint bounds, a rate limit) in front of
any robot, and ``EmergencyStop`` is how a driver tells the control loop to
stop: raised from ``read_sensors`` or ``send_command``, the loop stops the
robot within that tick and ends its run.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .base import BASIC_KEYS, Space, all_finite
from .randomize import ActionPipe, PhysicsRandomizer, RandomizeSpec, SensorNoise, mujoco_model

Obs = dict[str, np.ndarray]

#: Slack (in timesteps) when converting elapsed seconds to whole timesteps, so
#: that a clock advanced by exactly k timesteps gives k despite rounding.
_STEP_EPS = 1e-6


class EmergencyStop(Exception):
    """A driver's demand to stop now (a pressed e-stop button, a tripped limit, a lost watchdog).

    Raised from ``read_sensors`` or ``send_command`` (or a policy's ``step``),
    it makes ``ControlLoop.run`` call ``emergency_stop()``, send nothing more
    and return; ``LoopStats.estops`` and ``estop_reason`` record it. The
    robot stays stopped until its next ``reset``.
    """


@runtime_checkable
class Robot(Protocol):
    """What a hardware driver offers the control loop.

    Units: times in seconds (``clock`` is monotonic, its origin arbitrary);
    commands in the normalized units of ``action_space`` ([-1, 1] per
    dimension, the driver scales them to torques, velocities, ...);
    observations follow the env contract.

    Blocking: ``read_sensors``, ``send_command``, ``emergency_stop`` and
    ``clock`` run inside a control tick and must return within a small fraction
    of the period (read the latest sample from a buffer, queue the command; no
    waiting for the bus). ``emergency_stop`` must also be callable from any
    thread. ``reset`` and ``close`` run between episodes and may block (homing,
    powering down).
    """

    @property
    def obs_space(self) -> dict[str, Space]:
        """Every key ``read_sensors`` returns, the basic keys included."""

    @property
    def action_space(self) -> Space:
        """Commands: float32 ``(A,)`` in [-1, 1], or a one-hot ``(n,)``."""

    def clock(self) -> float:
        """The robot's monotonic clock, seconds."""

    def reset(self) -> None:
        """Brings the robot to a start state and clears an emergency stop.

        The next ``read_sensors`` has ``is_first=True`` and ``reward=0``.
        """

    def read_sensors(self) -> Obs:
        """The latest observation (the env contract's dict). Non-blocking."""

    def send_command(self, action: np.ndarray) -> np.ndarray | None:
        """Applies ``action`` until the next command. Non-blocking.

        Ignored while an emergency stop is latched. A driver that changes
        the command before applying it (limits, see ``SafeRobot``) returns
        what it applies, in the units of ``action_space``, so the loop records
        and tells the policy that action; None means ``action`` as given.
        """

    def emergency_stop(self) -> None:
        """Zeros the actuators and ignores commands until ``reset``. Any thread."""

    def close(self) -> None:
        """Stops the robot and frees the connection."""


class _DMCSim:
    """A dm_control suite task stepped one physics timestep at a time."""

    def __init__(self, name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> None:
        from . import DMC_FALLBACK_STEPS
        from .dmc import DMC

        self.raw = DMC(name, obs=obs, size=size, seed=seed, **kwargs)
        # The task is needed to apply controls and score single physics steps;
        # DMC keeps the dm_control Environment private.
        env = self.raw._env
        self._task = env.task
        self._physics = env.physics
        self._obs_mode = obs
        self.dt = float(self._physics.timestep())
        control_dt = float(env.control_timestep())
        # Suite rewards are per control step; scaled per physics step they sum
        # to the same return per second.
        self._reward_scale = self.dt / control_dt
        steps = self.raw.max_steps if math.isfinite(self.raw.max_steps) else DMC_FALLBACK_STEPS
        self.default_duration = steps * control_dt
        self.obs_space = self.raw.obs_space
        self.act_space = self.raw.act_space
        self.bounds = self.raw.act_bounds

    def reset(self, seed: int | None) -> None:
        self.raw.reset(seed)

    def advance(self, raw_action: np.ndarray) -> tuple[float, bool, bool]:
        """One physics timestep; returns (reward, last, terminal)."""
        self._task.before_step(raw_action, self._physics)
        self._physics.step()
        self._task.after_step(self._physics)
        reward = float(self._task.get_reward(self._physics) or 0.0) * self._reward_scale
        discount = self._task.get_termination(self._physics)
        return reward, discount is not None, discount is not None and discount == 0

    def sensors(self) -> Obs:
        obs: Obs = {}
        if self._obs_mode in ("vector", "both"):
            for key, value in self._task.get_observation(self._physics).items():
                obs[key] = np.asarray(value, np.float32).reshape(-1)
        if self._obs_mode in ("pixels", "both"):
            obs["image"] = self.raw.render()
        return obs

    def close(self) -> None:
        self.raw.close()


class _GymSim:
    """A continuous gymnasium env stepped one env step (``unwrapped.dt``) at a time.

    Gymnasium defines rewards and terminations per env step (``frame_skip``
    physics steps for MuJoCo envs), so that is the integration unit here.
    """

    def __init__(self, name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> None:
        from .gym import Gym

        self.raw = Gym(name, obs=obs, size=size, seed=seed, **kwargs)
        if self.raw.act_space.discrete or self.raw.act_bounds is None:
            self.raw.close()
            raise ValueError(f"MuJoCoRobot needs continuous actions; gym/{name} has {self.raw.act_space}")
        unwrapped = self.raw.gym_env.unwrapped
        dt = getattr(unwrapped, "dt", None)
        if dt is None:
            self.raw.close()
            raise ValueError(f"gym/{name} has no 'dt' (seconds per step); MuJoCoRobot cannot keep its time")
        self.dt = float(dt)
        spec = self.raw.gym_env.spec
        limit = getattr(spec, "max_episode_steps", None)
        self.default_duration = limit * self.dt if limit else math.inf
        self.obs_space = self.raw.obs_space
        self.act_space = self.raw.act_space
        self.bounds = self.raw.act_bounds
        self._sensors: Obs = {}

    def reset(self, seed: int | None) -> None:
        self._keep(self.raw.reset(seed))

    def advance(self, raw_action: np.ndarray) -> tuple[float, bool, bool]:
        """One env step; returns (reward, last, terminal)."""
        obs = self.raw.step(raw_action)
        self._keep(obs)
        return float(obs["reward"]), bool(obs["is_last"]), bool(obs["is_terminal"])

    def sensors(self) -> Obs:
        return dict(self._sensors)

    def close(self) -> None:
        self.raw.close()

    def _keep(self, obs: Obs) -> None:
        self._sensors = {k: v for k, v in obs.items() if k not in BASIC_KEYS}


class MuJoCoRobot:
    """A MuJoCo simulation behind the ``Robot`` interface, advancing in wall-clock time.

    Time: the episode clock starts at the first ``read_sensors`` after
    ``reset`` (until then the robot holds its start state, like a homed robot
    on its brakes). From then on, every ``read_sensors``, ``send_command`` and
    ``emergency_stop`` first integrates ``floor((clock() - start) / timestep)``
    minus the steps already done, under the command active until that call
    (zero-order hold); the remainder below one timestep carries over. So a
    command sent ``x`` seconds into a tick takes effect at the first timestep
    boundary after it, and a late read integrates more steps.

    Rewards: ``read_sensors`` returns the sum over the steps integrated since
    the previous read (0 on the ``is_first`` read). DMC rewards are per control
    step, so each physics step adds ``reward · timestep / control_timestep``.

    Episode end: ``is_last`` once ``duration_s`` of simulated time has passed
    (whole timesteps) or the task terminates (``is_terminal``); the physics
    then stops until ``reset``.

    Integration unit (``timestep``): one physics timestep for ``dmc/`` tasks
    (stepped through the suite task, so controls and rewards match
    ``envs.make``), one env step (``unwrapped.dt``: ``frame_skip`` physics
    steps) for ``gym/`` envs, which define rewards per env step.

    Commands are in [-1, 1] (clipped) and rescaled to the actuator bounds as
    ``NormalizeAction`` does, so a policy trained on ``envs.make(name)`` with
    the same action repeat ≈ rate can drive it. An emergency stop applies a
    raw command of zero (zero force/torque, clipped into the bounds) and
    ignores commands until ``reset``.

    Reality gap (``perturb``): physics factors (mass, friction, damping,
    gain) are drawn once, here, from the spec's ranges (``[x, x]`` for a fixed
    factor) and kept for the robot's life, as are the per-element sensor
    biases; every ``read_sensors`` adds sensor noise and dropout, and every
    command goes through the spec's action noise and a delay of
    ``act_delay`` commands (zeros before the first). The draws use
    ``perturb.seed``, else ``seed``; ``perturbation`` lists them.

    All public methods hold one lock, so ``emergency_stop`` may come from any
    thread.

    Args:
        name: ``dmc/<domain>_<task>`` or ``gym/<id>`` (continuous actions, an
            ``unwrapped.dt``; e.g. ``gym/Hopper-v5``).
        obs: ``vector``, ``pixels`` or ``both`` (pixels are rendered at each
            read for dmc, at each integrated step for gym).
        seed: seed of the task.
        duration_s: episode length in simulated seconds; default the task's
            own limit (DMC: 1000 control steps, e.g. 10 s for cartpole; gym:
            ``max_episode_steps · dt``, unlimited when it has none).
        clock: monotonic clock in seconds; inject a fake one in tests.
        size: image (height, width) for pixels.
        perturb: the robot's difference from the simulator (None: none).
        **kwargs: passed to ``envs.dmc.DMC`` or ``envs.gym.Gym``.

    Raises:
        ValueError: for an unknown family or name, or a gym env without
            continuous actions or ``dt``.
    """

    def __init__(
        self,
        name: str,
        *,
        obs: str = "vector",
        seed: int = 0,
        duration_s: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
        size: tuple[int, int] = (64, 64),
        perturb: RandomizeSpec | None = None,
        **kwargs: Any,
    ) -> None:
        family, _, rest = name.partition("/")
        height, width = size  # (a list from a config, too)
        if family == "dmc" and rest:
            self._sim: _DMCSim | _GymSim = _DMCSim(rest, obs, seed, (height, width), kwargs)
        elif family == "gym" and rest:
            self._sim = _GymSim(rest, obs, seed, (height, width), kwargs)
        else:
            raise ValueError(f"MuJoCoRobot: expected 'dmc/<domain>_<task>' or 'gym/<id>', got {name!r}")
        self.name = name
        self._clock = clock
        self._lock = threading.RLock()
        duration = self._sim.default_duration if duration_s is None else float(duration_s)
        if not duration > 0:
            raise ValueError(f"duration_s must be positive, got {duration_s}")
        self._duration = duration
        self._max_steps: float = math.floor(duration / self._sim.dt + _STEP_EPS) if math.isfinite(duration) else math.inf
        if self._max_steps < 1:
            raise ValueError(f"duration_s={duration_s} is shorter than one timestep ({self._sim.dt} s)")

        low, high = (np.asarray(b, np.float64) for b in self._sim.bounds)
        finite = np.isfinite(low) & np.isfinite(high)
        # Unbounded dimensions pass through, as in NormalizeAction.
        self._low = np.where(finite, low, -1.0)
        self._high = np.where(finite, high, 1.0)
        self._raw_dtype = self._sim.act_space.dtype
        self._stop_command = np.clip(np.zeros_like(low), low, high).astype(self._raw_dtype)
        self._space = Space(np.float32, self._sim.act_space.shape, -1.0, 1.0)

        self._needs_reset = True
        self._estopped = False
        self._command = np.zeros(self._space.shape, np.float32)
        self._raw = self._stop_command.copy()
        self._origin: float | None = None
        self._steps = 0
        self._reward = 0.0
        self._last = False
        self._terminal = False
        self._first = True

        self._perturb = perturb or RandomizeSpec()
        self._rng = np.random.default_rng([(seed if self._perturb.seed is None else self._perturb.seed) % 2**63, 2])
        self.perturbation: dict[str, float] = {}
        if self._perturb.physics:
            model = mujoco_model(self._sim.raw)
            if model is None:
                raise ValueError(f"MuJoCoRobot: {name} has no MuJoCo model to perturb")
            self.perturbation.update(PhysicsRandomizer(model, self._perturb).sample(self._rng))
        self._sensor_noise = SensorNoise(self._sim.obs_space, self._perturb) if self._perturb.sensors else None
        if self._sensor_noise is not None:
            self.perturbation.update(self._sensor_noise.begin(self._rng))  # the biases stay for the robot's life
        self._pipe = ActionPipe(self._space, self._perturb) if self._perturb.actions else None

    # -- the Robot interface ---------------------------------------------------

    @property
    def obs_space(self) -> dict[str, Space]:
        """The same keys, dtypes and shapes as ``envs.make(name, obs=obs)``."""
        return self._sim.obs_space

    @property
    def action_space(self) -> Space:
        """Float32 ``(A,)`` in [-1, 1]."""
        return self._space

    def clock(self) -> float:
        """The injected clock, seconds."""
        return self._clock()

    def reset(self, seed: int | None = None) -> None:
        """Starts an episode: resets the task, clears the stop latch, zeros the command.

        Args:
            seed: reseeds the task (None continues its random stream).
        """
        with self._lock:
            self._sim.reset(seed)
            self._needs_reset = False
            self._estopped = False
            self._command = np.zeros(self._space.shape, np.float32)
            self._raw = self._to_raw(self._command)
            self._origin = None
            self._steps = 0
            self._reward = 0.0
            self._last = self._terminal = False
            self._first = True
            if self._pipe is not None:
                self._pipe.reset()
            if self._sensor_noise is not None:
                self._sensor_noise.forget()

    def read_sensors(self) -> Obs:
        """Integrates up to now and returns the observation (see the class docstring).

        Raises:
            RuntimeError: before the first ``reset``.
        """
        with self._lock:
            self._check_reset()
            if self._origin is None:
                self._origin = self._clock()
            else:
                self._catch_up()
            obs = self._sim.sensors()
            if self._sensor_noise is not None:
                obs = self._sensor_noise.apply(obs, self._rng)
            obs["reward"] = np.array(0.0 if self._first else self._reward, np.float32)
            obs["is_first"] = np.array(self._first)
            obs["is_last"] = np.array(self._last)
            obs["is_terminal"] = np.array(self._terminal)
            self._reward = 0.0
            self._first = False
            return obs

    def send_command(self, action: np.ndarray) -> None:
        """Integrates up to now under the old command, then applies ``action`` (after the perturbation's delay and noise).

        Args:
            action: float32 ``(A,)``; clipped to [-1, 1]. Ignored while an
                emergency stop is latched or after ``is_last``.

        Raises:
            ValueError: for a wrong shape or non-finite values.
            RuntimeError: before the first ``reset``.
        """
        command = np.asarray(action, np.float32)
        if command.shape != self._space.shape or not all_finite(command):
            raise ValueError(f"command: expected finite float32 {self._space.shape}, got {command!r}")
        with self._lock:
            self._check_reset()
            self._catch_up()
            if self._estopped:
                return
            command = np.clip(command, -1.0, 1.0)
            # The reality gap acts after the command left the controller: what the actuators get.
            self._command = command if self._pipe is None else self._pipe.push(command, self._rng)
            self._raw = self._to_raw(self._command)

    def emergency_stop(self) -> None:
        """Integrates up to now, then zeros the raw command and latches until ``reset``."""
        with self._lock:
            if not self._needs_reset:
                self._catch_up()
            self._estopped = True
            self._command = np.zeros(self._space.shape, np.float32)
            self._raw = self._stop_command.copy()

    def close(self) -> None:
        """Frees the simulator."""
        with self._lock:
            self._needs_reset = True
            self._sim.close()

    # -- inspection --------------------------------------------------------------

    @property
    def timestep(self) -> float:
        """Seconds per integrated step."""
        return self._sim.dt

    @property
    def duration_s(self) -> float:
        """Episode length in simulated seconds (inf when unlimited)."""
        return self._duration

    @property
    def sim_steps(self) -> int:
        """Steps integrated in this episode."""
        return self._steps

    @property
    def sim_time(self) -> float:
        """Simulated seconds in this episode (``sim_steps · timestep``)."""
        return self._steps * self._sim.dt

    @property
    def command(self) -> np.ndarray:
        """The command in effect, in [-1, 1] (zeros after an emergency stop)."""
        return self._command.copy()

    @property
    def raw_command(self) -> np.ndarray:
        """The command in effect in the simulator's units."""
        return self._raw.copy()

    @property
    def estopped(self) -> bool:
        """True while an emergency stop is latched."""
        return self._estopped

    @property
    def sim(self) -> Any:
        """The raw simulator (``envs.dmc.DMC`` or ``envs.gym.Gym``), for inspection."""
        return self._sim.raw

    # -- internals ---------------------------------------------------------------

    def _check_reset(self) -> None:
        if self._needs_reset:
            raise RuntimeError("MuJoCoRobot: call reset() first")

    def _to_raw(self, command: np.ndarray) -> np.ndarray:
        action = command.astype(np.float64)
        raw = 0.5 * (self._low * (1.0 - action) + self._high * (1.0 + action))
        return raw.astype(self._raw_dtype)

    def _catch_up(self) -> None:
        """Integrates the timesteps due by now under the current raw command."""
        if self._origin is None or self._last:
            return
        due = min(math.floor((self._clock() - self._origin) / self._sim.dt + _STEP_EPS), self._max_steps)  # a float: max may be inf
        while self._steps < due:
            reward, last, terminal = self._sim.advance(self._raw)
            self._steps += 1
            self._reward += reward
            if last or self._steps >= self._max_steps:
                self._last = True
                self._terminal = terminal
                return


class SafeRobot:
    """Command limits in front of a robot: per-joint bounds and a rate limit.

    Each command is clipped to the sub-box ``[low, high]`` of [-1, 1], then
    moved at most ``max_delta`` per dimension away from the previous command
    applied (zeros after ``reset``, which is what a robot holds when it
    starts), then clipped into the box again: the bounds are hard, the rate
    limit holds inside them. ``send_command`` returns the limited command, so
    the control loop records it and tells the policy. Everything else is the
    wrapped robot's; ``emergency_stop`` passes straight through.

    Args:
        robot: the robot (a ``Robot`` with a continuous ``(A,)`` action space).
        max_delta: largest change per tick and dimension ([-1, 1] units);
            0 or None: no rate limit.
        low: lower bounds, one number or one per dimension, within [-1, 1]
            (None: -1).
        high: upper bounds likewise (None: 1).

    Raises:
        ValueError: for a discrete action space, a negative or non-finite
            ``max_delta``, or bounds of the wrong size, outside [-1, 1] or
            with ``low > high``.
    """

    def __init__(self, robot: Any, *, max_delta: float | None = None, low: Any = None, high: Any = None) -> None:
        space = robot.action_space
        if space.discrete or len(space.shape) != 1:
            raise ValueError(f"SafeRobot needs a continuous (A,) action space, got {space}")
        self.robot = robot
        delta = float(max_delta or 0.0)
        if not (math.isfinite(delta) and delta >= 0):
            raise ValueError(f"safety.max_delta: expected a number >= 0, got {max_delta!r}")
        self.max_delta = delta
        self.low = self._bound("low", low, -1.0, space.shape)
        self.high = self._bound("high", high, 1.0, space.shape)
        if np.any(self.low > self.high):
            raise ValueError(f"safety: low {self.low.tolist()} exceeds high {self.high.tolist()}")
        self._previous = np.zeros(space.shape, np.float32)
        #: Commands the limits changed (bounds or rate).
        self.limited = 0

    @staticmethod
    def _bound(name: str, value: Any, default: float, shape: tuple[int, ...]) -> np.ndarray:
        if value is None or (not np.isscalar(value) and len(value) == 0):
            return np.full(shape, default, np.float32)
        array = np.asarray(value, np.float64).reshape(-1)
        if array.size == 1:
            array = np.full(shape, array[0])
        if array.shape != shape or not np.all(np.isfinite(array)) or np.any(np.abs(array) > 1):
            raise ValueError(f"safety.{name}: expected one number or {shape[0]} numbers within [-1, 1], got {value!r}")
        return array.astype(np.float32)

    @property
    def obs_space(self) -> dict[str, Space]:
        """The wrapped robot's."""
        return self.robot.obs_space

    @property
    def action_space(self) -> Space:
        """The wrapped robot's (commands outside the limits are accepted and limited)."""
        return self.robot.action_space

    def clock(self) -> float:
        """The wrapped robot's clock."""
        return self.robot.clock()

    def reset(self) -> None:
        """Resets the robot; the rate limit starts again from zeros."""
        self.robot.reset()
        self._previous = np.zeros(self.action_space.shape, np.float32)

    def read_sensors(self) -> Obs:
        """The wrapped robot's observation."""
        return self.robot.read_sensors()

    def limit(self, action: np.ndarray) -> np.ndarray:
        """The command ``action`` becomes (bounds, then rate limit), without sending it."""
        command = np.clip(np.asarray(action, np.float32), self.low, self.high)
        if self.max_delta > 0:
            command = self._previous + np.clip(command - self._previous, -self.max_delta, self.max_delta)
            command = np.clip(command, self.low, self.high)
        return command.astype(np.float32)

    def send_command(self, action: np.ndarray) -> np.ndarray:
        """Sends the limited command; returns it.

        Raises:
            ValueError: for a wrong shape or non-finite values (nothing is sent).
        """
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape or not all_finite(action):
            raise ValueError(f"command: expected finite float32 {self.action_space.shape}, got {action!r}")
        command = self.limit(action)
        if not np.array_equal(command, np.clip(action, -1.0, 1.0)):
            self.limited += 1
        self.robot.send_command(command)
        self._previous = command
        return command.copy()

    def emergency_stop(self) -> None:
        """The wrapped robot's emergency stop (any thread)."""
        self.robot.emergency_stop()

    def close(self) -> None:
        """Closes the wrapped robot."""
        self.robot.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "robot":
            raise AttributeError(name)
        return getattr(self.robot, name)


__all__ = ["EmergencyStop", "MuJoCoRobot", "Robot", "SafeRobot"]
