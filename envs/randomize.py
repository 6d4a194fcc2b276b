"""Domain randomisation for simulation, and the same perturbations for the stand-in robot.

Three parts, each numpy only (no torch; the MuJoCo model is used through the
simulator's own object, so this module imports no simulator either):

* ``PhysicsRandomizer``: multiplies body masses (with their inertias), geom
  friction, dof damping and actuator gains of a MuJoCo ``MjModel`` by factors
  drawn from ``[low, high]`` per element, always starting from the nominal
  values saved once at construction.
* ``SensorNoise``: Gaussian noise and a per-episode bias on float sensor
  values, and dropout (a sensor key keeps its previous value).
* ``ActionPipe``: Gaussian action noise and an exact delay of ``k`` control
  ticks (the action applied at tick ``t`` is the one computed at tick
  ``t − k``; during an episode's first ``k`` ticks the neutral action is
  applied: zeros, or the one-hot of index 0 for a discrete space, the same
  action the control loop's ``zero`` safe action sends).

``Randomize`` puts them around an environment (``envs.make`` adds it when
``env.randomize`` asks for anything); ``MuJoCoRobot`` uses them for its fixed
"reality gap" (``realtime.robot_perturb``).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import BASIC_KEYS, Env, Space, zero_action
from .wrappers import Wrapper

Obs = dict[str, np.ndarray]

#: The physics parameters and the model arrays each one scales.
PHYSICS_PARAMS = ("mass", "friction", "damping", "gain")
#: Prefix of the per-episode values in observations (``log/`` keys never reach the model).
LOG_PREFIX = "log/randomize/"
#: mjtBias's mjBIAS_AFFINE: bias = biasprm[0] + biasprm[1]·length + biasprm[2]·velocity.
_BIAS_AFFINE = 1


def _range(name: str, value: Any) -> tuple[float, float]:
    """``[low, high]`` (or one number, meaning ``[x, x]``) as a checked pair of floats."""
    if isinstance(value, (int, float)):
        low = high = float(value)
    else:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"randomize.{name}: expected [low, high] or a number, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"randomize.{name}: expected finite low <= high, got [{low}, {high}]")
    return low, high


@dataclasses.dataclass(frozen=True)
class RandomizeSpec:
    """What to randomise (the ``env.randomize`` / ``realtime.robot_perturb`` config, checked).

    Attributes:
        mass: factor range for each body's mass (its inertia is scaled by the
            same factor: the same shape with another density).
        friction: factor range for each geom's friction (sliding, torsional
            and rolling alike).
        damping: factor range for each degree of freedom's damping.
        gain: factor range for each actuator's gain (``gainprm[0]``); where
            the actuator's affine bias mirrors the gain (a position servo's
            ``biasprm[1] = −kp``, a velocity servo's ``biasprm[2] = −kv``)
            that term is scaled too, so a servo gets stiffer or softer
            without moving its set point.
        obs_noise: standard deviation of Gaussian noise added to every float
            sensor value at every tick.
        obs_bias: range of a per-episode offset drawn uniformly for every
            float sensor element (``[b, b]``: a fixed offset ``b``).
        act_noise: standard deviation of Gaussian noise added to continuous
            actions (then clipped to [-1, 1]).
        act_delay: control ticks between computing an action and applying it.
        dropout: probability per sensor key and tick that the key keeps its
            previous value (never on an episode's first observation).
        seed: seed of the draws; None uses the environment's seed.
    """

    mass: tuple[float, float] = (1.0, 1.0)
    friction: tuple[float, float] = (1.0, 1.0)
    damping: tuple[float, float] = (1.0, 1.0)
    gain: tuple[float, float] = (1.0, 1.0)
    obs_noise: float = 0.0
    obs_bias: tuple[float, float] = (0.0, 0.0)
    act_noise: float = 0.0
    act_delay: int = 0
    dropout: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in (*PHYSICS_PARAMS, "obs_bias"):
            low, high = _range(name, getattr(self, name))
            if name in PHYSICS_PARAMS and low <= 0:
                raise ValueError(f"randomize.{name}: factors must be positive, got [{low}, {high}]")
            object.__setattr__(self, name, (low, high))
        for name in ("obs_noise", "act_noise"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"randomize.{name}: expected a standard deviation >= 0, got {value}")
            object.__setattr__(self, name, value)
        delay = self.act_delay
        if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
            raise ValueError(f"randomize.act_delay: expected a whole number of ticks >= 0, got {delay!r}")
        object.__setattr__(self, "act_delay", int(delay))
        dropout = float(self.dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"randomize.dropout: expected a probability in [0, 1), got {dropout}")
        object.__setattr__(self, "dropout", dropout)
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> RandomizeSpec:
        """The spec of a config node (``DictConfig`` or dict); None or {} is nominal.

        Raises:
            ValueError: for an unknown key or an invalid value (one line, naming it).
        """
        if node is None:
            return cls()
        values = dict(node.items())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"randomize: unknown keys {unknown}; valid: {sorted(known)}")
        values = {k: (list(v) if not isinstance(v, (int, float, str, type(None))) else v) for k, v in values.items()}
        return cls(**values)

    @property
    def physics(self) -> bool:
        """True when any physics factor range differs from exactly 1."""
        return any(getattr(self, name) != (1.0, 1.0) for name in PHYSICS_PARAMS)

    @property
    def sensors(self) -> bool:
        """True when observations are perturbed (noise, bias or dropout)."""
        return self.obs_noise > 0 or self.obs_bias != (0.0, 0.0) or self.dropout > 0

    @property
    def actions(self) -> bool:
        """True when actions are perturbed (noise or delay)."""
        return self.act_noise > 0 or self.act_delay > 0

    @property
    def enabled(self) -> bool:
        """True when anything differs from the nominal simulator."""
        return self.physics or self.sensors or self.actions


def mujoco_model(env: Any) -> Any:
    """The ``mujoco.MjModel`` under ``env`` (reverie wrappers, ``DMC``, ``Gym``), or None.

    dm_control: ``physics.model.ptr``; gymnasium MuJoCo: ``unwrapped.model``.
    """
    raw = getattr(env, "unwrapped", env)
    physics = getattr(raw, "physics", None)
    if physics is not None:
        model = physics.model
        return getattr(model, "ptr", model)
    gym_env = getattr(raw, "gym_env", None)
    if gym_env is not None:
        return getattr(gym_env.unwrapped, "model", None)
    return None


class PhysicsRandomizer:
    """Scales a MuJoCo model's physics parameters, always from their nominal values.

    The nominal arrays are copied once, here; ``sample`` writes nominal ×
    factor into the model in place (the simulator reads the model at every
    step, so the change holds from the next step on) and ``restore`` writes
    the nominal values back. Factors are drawn per element: per body (the
    world body excluded), per geom, per dof, per actuator.

    Args:
        model: a ``mujoco.MjModel`` (see ``mujoco_model``).
        spec: the factor ranges; ranges of exactly [1, 1] leave their arrays alone.
    """

    def __init__(self, model: Any, spec: RandomizeSpec) -> None:
        self.model = model
        self.spec = spec
        self.nominal = {
            "body_mass": model.body_mass.copy(),
            "body_inertia": model.body_inertia.copy(),
            "geom_friction": model.geom_friction.copy(),
            "dof_damping": model.dof_damping.copy(),
            "actuator_gainprm": model.actuator_gainprm.copy(),
            "actuator_biasprm": model.actuator_biasprm.copy(),
        }
        gain = self.nominal["actuator_gainprm"][:, 0]
        bias = self.nominal["actuator_biasprm"]
        affine = np.asarray(model.actuator_biastype) == _BIAS_AFFINE
        # Bias terms that mirror the gain (position and velocity servos) scale with it.
        self.mirrored = [affine & (gain != 0) & (bias[:, j] == -gain) for j in (1, 2)]
        self.names = {
            "mass": [_name(model.body(i).name, "body", i) for i in range(model.nbody)],
            "friction": [_name(model.geom(i).name, "geom", i) for i in range(model.ngeom)],
            "damping": [_name(model.joint(int(model.dof_jntid[i])).name, "dof", i) for i in range(model.nv)],
            "gain": [_name(model.actuator(i).name, "actuator", i) for i in range(model.nu)],
        }
        self.names["damping"] = _unique(self.names["damping"])  # a ball or free joint has several dofs

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Restores the nominal model, then applies freshly drawn factors.

        Returns:
            ``{"<param>/<element>": factor}`` for the enabled parameters and
            the elements whose nominal value is not zero (a zero stays zero).
        """
        self.restore()
        m, nominal, spec = self.model, self.nominal, self.spec
        drawn: dict[str, np.ndarray] = {}
        for name in PHYSICS_PARAMS:
            low, high = getattr(spec, name)
            if (low, high) != (1.0, 1.0):
                drawn[name] = rng.uniform(low, high, len(self.names[name]))
        if "mass" in drawn:
            f = drawn["mass"]
            f[0] = 1.0  # the world body
            m.body_mass[:] = nominal["body_mass"] * f
            m.body_inertia[:] = nominal["body_inertia"] * f[:, None]
        if "friction" in drawn:
            m.geom_friction[:] = nominal["geom_friction"] * drawn["friction"][:, None]
        if "damping" in drawn:
            m.dof_damping[:] = nominal["dof_damping"] * drawn["damping"]
        if "gain" in drawn:
            f = drawn["gain"]
            m.actuator_gainprm[:, 0] = nominal["actuator_gainprm"][:, 0] * f
            for j, mirrored in zip((1, 2), self.mirrored):
                m.actuator_biasprm[mirrored, j] = nominal["actuator_biasprm"][mirrored, j] * f[mirrored]
        values: dict[str, float] = {}
        base = {"mass": "body_mass", "friction": "geom_friction", "damping": "dof_damping", "gain": "actuator_gainprm"}
        for name, factors in drawn.items():
            nominal_values = nominal[base[name]]
            nominal_values = nominal_values[:, 0] if nominal_values.ndim == 2 else nominal_values
            for i, (element, factor) in enumerate(zip(self.names[name], factors)):
                if nominal_values[i] != 0 and not (name == "mass" and i == 0):
                    values[f"{name}/{element}"] = float(factor)
        return values

    def restore(self) -> None:
        """Writes the nominal values back into the model."""
        for attr, value in self.nominal.items():
            getattr(self.model, attr)[:] = value


def _name(name: str, kind: str, index: int) -> str:
    return name or f"{kind}{index}"


def _unique(names: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    out = []
    for name in names:
        n = counts.get(name, 0)
        counts[name] = n + 1
        out.append(name if n == 0 else f"{name}_{n}")
    return out


class SensorNoise:
    """Noise, bias and dropout on the sensor keys of observations.

    Float sensor keys get ``value + bias + N(0, obs_noise²)`` (the bias drawn
    per element at ``begin``); then each sensor key (images included) is, with
    probability ``dropout``, replaced by the value delivered at the previous
    tick (a sensor that did not update). Basic keys and ``log/`` keys pass
    through.

    Args:
        obs_space: the observation space (sensor keys and their dtypes).
        spec: ``obs_noise``, ``obs_bias`` and ``dropout``.
    """

    def __init__(self, obs_space: Mapping[str, Space], spec: RandomizeSpec) -> None:
        self.spec = spec
        self.keys = [k for k in obs_space if k not in BASIC_KEYS and not k.startswith("log/")]
        self.float_keys = [k for k in self.keys if np.issubdtype(np.dtype(obs_space[k].dtype), np.floating)]
        self._shapes = {k: obs_space[k].shape for k in self.float_keys}
        self._bias: dict[str, np.ndarray] = {}
        self._previous: Obs = {}

    def forget(self) -> None:
        """Forgets the held values (an episode starts: nothing to repeat yet)."""
        self._previous = {}

    def begin(self, rng: np.random.Generator) -> dict[str, float]:
        """Starts an episode: draws the biases, forgets held values; returns the mean bias per key."""
        low, high = self.spec.obs_bias
        self.forget()
        if (low, high) == (0.0, 0.0):
            self._bias = {}
            return {}
        self._bias = {k: rng.uniform(low, high, self._shapes[k]).astype(np.float32) for k in self.float_keys}
        return {f"obs_bias/{k}": float(v.mean()) for k, v in self._bias.items()}

    def apply(self, obs: Obs, rng: np.random.Generator) -> Obs:
        """The perturbed observation (a new dict; ``obs`` is not changed)."""
        out = dict(obs)
        std = self.spec.obs_noise
        for key in self.float_keys:
            value = out[key]
            if key in self._bias:
                value = value + self._bias[key]
            if std > 0:
                value = value + rng.normal(0.0, std, value.shape)
            out[key] = np.asarray(value, obs[key].dtype)
        p = self.spec.dropout
        if p > 0:
            held = rng.random(len(self.keys)) < p
            for key, hold in zip(self.keys, held):
                if hold and key in self._previous:
                    out[key] = self._previous[key]
        if p > 0:
            self._previous = {k: out[k] for k in self.keys}
        return out


class ActionPipe:
    """Action delay (exact, in ticks) and action noise.

    ``push(a_t)`` returns the action to apply now: ``a_{t−k}`` (the neutral
    action for the first ``k`` ticks after ``reset``), plus Gaussian noise of
    ``act_noise`` for continuous actions, clipped to [-1, 1].

    Args:
        act_space: the agent's action space.
        spec: ``act_delay`` and ``act_noise``.

    Raises:
        ValueError: for action noise on a discrete action space.
    """

    def __init__(self, act_space: Space, spec: RandomizeSpec) -> None:
        if spec.act_noise > 0 and act_space.discrete:
            raise ValueError("randomize.act_noise needs continuous actions; this task's actions are discrete")
        self.space = act_space
        self.delay = spec.act_delay
        self.noise = spec.act_noise
        self._queue: deque[np.ndarray] = deque()
        self.reset()

    def reset(self) -> None:
        """Starts an episode: the next ``delay`` ticks apply the neutral action."""
        self._queue = deque(zero_action(self.space) for _ in range(self.delay))

    def push(self, action: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Takes the action computed now; returns the one to apply now."""
        self._queue.append(np.array(action, copy=True))
        applied = self._queue.popleft()
        if self.noise > 0:
            applied = np.clip(applied + rng.normal(0.0, self.noise, applied.shape), -1.0, 1.0).astype(self.space.dtype)
        return applied


class Randomize(Wrapper):
    """An environment with randomised physics, sensors and actions (``env.randomize``).

    At every ``reset`` the physics factors are drawn again (from the nominal
    model) before the inner reset, and the sensor biases are drawn; every
    ``step`` passes the action through ``ActionPipe`` and the observation
    through ``SensorNoise``. The episode's drawn values go out on its
    ``is_last`` observation as ``log/randomize/<param>/<element>`` keys (the
    trainer writes them to metrics.jsonl as ``randomize/...``) and are in
    ``episode_values``.

    Draws: a reset with a seed draws that episode from ``(seed of the
    randomisation, reset seed)``, so an episode's draws depend only on the
    two seeds (a resumed run sees the same episodes); a reset without a seed
    continues one stream seeded by the randomisation's seed. The
    randomisation's seed is ``spec.seed``, else ``seed``.

    Args:
        env: the environment (``ActionRepeat``/``TimeLimit`` inside: the delay
            and noise act per agent step).
        spec: what to randomise.
        seed: the environment's seed.

    Raises:
        ValueError: when physics factors are asked for and ``env`` has no
            MuJoCo model.
    """

    def __init__(self, env: Env, spec: RandomizeSpec, seed: int = 0) -> None:
        super().__init__(env)
        self.spec = spec
        self.seed = spec.seed if spec.seed is not None else int(seed)
        self._rng = np.random.default_rng([self.seed % 2**63, 0])
        self.physics: PhysicsRandomizer | None = None
        if spec.physics:
            model = mujoco_model(env)
            if model is None:
                raise ValueError(
                    "randomize: mass/friction/damping/gain need a MuJoCo task (dmc/ or gym/ MuJoCo); this environment has no MuJoCo model"
                )
            self.physics = PhysicsRandomizer(model, spec)
        self.sensors = SensorNoise(env.obs_space, spec)
        self.actions = ActionPipe(env.act_space, spec)
        self.episode_values: dict[str, float] = {}

    def reset(self, seed: int | None = None) -> Obs:
        """Draws this episode's perturbation and resets the inner environment."""
        if seed is not None:
            self._rng = np.random.default_rng([self.seed % 2**63, int(seed) % 2**63, 1])
        values: dict[str, float] = {}
        if self.physics is not None:
            values.update(self.physics.sample(self._rng))
        obs = self.env.reset() if seed is None else self.env.reset(seed=seed)
        values.update(self.sensors.begin(self._rng))
        self.episode_values = values
        self.actions.reset()
        return self.sensors.apply(obs, self._rng)

    def step(self, action: np.ndarray) -> Obs:
        """Applies the (delayed, noisy) action and perturbs the observation."""
        obs = self.sensors.apply(self.env.step(self.actions.push(action, self._rng)), self._rng)
        if obs["is_last"]:
            for key, value in self.episode_values.items():
                obs[LOG_PREFIX + key] = np.array(value, np.float32)
        return obs

    def close(self) -> None:
        """Restores the nominal model and closes the inner environment."""
        if self.physics is not None:
            self.physics.restore()
        self.env.close()


def episode_log(obs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The ``randomize/...`` metrics of an ``is_last`` observation (its ``log/randomize/`` keys)."""
    return {key[len("log/") :]: float(value) for key, value in obs.items() if key.startswith(LOG_PREFIX)}


__all__ = [
    "LOG_PREFIX",
    "PHYSICS_PARAMS",
    "ActionPipe",
    "PhysicsRandomizer",
    "RandomizeSpec",
    "Randomize",
    "SensorNoise",
    "episode_log",
    "mujoco_model",
]
