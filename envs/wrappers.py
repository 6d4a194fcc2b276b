"""Wrappers that adapt raw environments to the reverie contract.

``make`` stacks them as ``CheckSpaces(TimeLimit(ActionRepeat(NormalizeAction
or OneHotAction(raw))))``. Each wrapper does one job:

* ``NormalizeAction``: the agent acts in [-1, 1]; the simulator gets its bounds.
* ``OneHotAction``: the agent sends a one-hot vector; the simulator an index.
* ``ActionRepeat``: repeats an action, summing rewards, stopping at ``is_last``.
* ``TimeLimit``: ends episodes after a number of agent steps (``is_last`` only).
* ``CheckSpaces``: verifies every observation and action at the boundary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Env, Space

Obs = dict[str, np.ndarray]


def _reset(env: Env, seed: int | None) -> Obs:
    """Resets ``env``; passes ``seed`` only when given, for envs without it."""
    return env.reset() if seed is None else env.reset(seed=seed)


class Wrapper:
    """Base wrapper: forwards everything to the inner environment.

    Args:
        env: the environment to wrap.
    """

    def __init__(self, env: Env) -> None:
        self.env = env

    @property
    def obs_space(self) -> dict[str, Space]:
        """The inner environment's observation space."""
        return self.env.obs_space

    @property
    def act_space(self) -> Space:
        """The inner environment's action space."""
        return self.env.act_space

    @property
    def unwrapped(self) -> Any:
        """The innermost (raw) environment."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def reset(self, seed: int | None = None) -> Obs:
        """Resets the inner environment, passing ``seed`` when given."""
        return _reset(self.env, seed)

    def step(self, action: np.ndarray) -> Obs:
        """Steps the inner environment."""
        return self.env.step(action)

    def close(self) -> None:
        """Closes the inner environment."""
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env!r})"


class NormalizeAction(Wrapper):
    """Lets the agent act in [-1, 1] and rescales to the simulator's bounds.

    The bounds come from ``low``/``high`` when given, else from the inner
    environment's ``act_bounds`` property (a ``(low, high)`` pair of float
    arrays of shape ``(A,)``), else from ``act_space.low``/``high``. Dimensions
    whose bounds are not finite are passed through unchanged. Actions are
    clipped to [-1, 1] before rescaling.

    Args:
        env: a continuous-action environment.
        low: optional lower bounds (scalar or ``(A,)``).
        high: optional upper bounds (scalar or ``(A,)``).
    """

    def __init__(
        self,
        env: Env,
        low: float | np.ndarray | None = None,
        high: float | np.ndarray | None = None,
    ) -> None:
        super().__init__(env)
        inner = env.act_space
        if inner.discrete or len(inner.shape) != 1:
            raise ValueError(f"NormalizeAction needs a continuous (A,) action space, got {inner}")
        if low is None or high is None:
            bounds = getattr(env, "act_bounds", None)
            if bounds is None:
                bounds = (inner.low, inner.high)
            low = bounds[0] if low is None else low
            high = bounds[1] if high is None else high
        if low is None or high is None:
            raise ValueError("NormalizeAction: the inner environment exposes no action bounds")
        shape = inner.shape
        self._low = np.broadcast_to(np.asarray(low, np.float64), shape).copy()
        self._high = np.broadcast_to(np.asarray(high, np.float64), shape).copy()
        # Unbounded dimensions map [-1, 1] to itself, i.e. pass through.
        finite = np.isfinite(self._low) & np.isfinite(self._high)
        self._low[~finite], self._high[~finite] = -1.0, 1.0
        if np.any(self._low >= self._high):
            raise ValueError(f"NormalizeAction: bad bounds low={self._low} high={self._high}")
        self._dtype = inner.dtype
        self._space = Space(np.float32, shape, -1.0, 1.0)

    @property
    def act_space(self) -> Space:
        """Float32 ``(A,)`` in [-1, 1]."""
        return self._space

    @property
    def act_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The agent-side bounds, -1 and 1 in every dimension."""
        ones = np.ones(self._space.shape, np.float32)
        return -ones, ones

    def step(self, action: np.ndarray) -> Obs:
        """Rescales ``action`` from [-1, 1] to the bounds and steps."""
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        # Written so that -1 and 1 give exactly low and high.
        raw = 0.5 * (self._low * (1.0 - action) + self._high * (1.0 + action))
        return self.env.step(raw.astype(self._dtype))


#: How far from exact 0/1 a one-hot action's entries may be.
ONE_HOT_TOL = 1e-4


class OneHotAction(Wrapper):
    """Takes a one-hot action and passes the index to the inner environment.

    The inner environment's ``act_space`` must be discrete: an integer scalar
    space with ``low`` and ``high`` (index ``i`` of the one-hot vector becomes
    ``low + i``). Entries may differ from exact 0/1 by ``ONE_HOT_TOL``.

    Args:
        env: a discrete-action environment.
    """

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        inner = env.act_space
        if not inner.discrete or inner.high is None:
            raise ValueError(f"OneHotAction needs a discrete action space with bounds, got {inner}")
        lo = int(inner.low or 0)
        self._offset = lo
        self._n = int(inner.high) - lo + 1
        self._space = Space(np.float32, (self._n,), 0.0, 1.0, discrete=True)

    @property
    def act_space(self) -> Space:
        """One-hot float32 ``(n,)``."""
        return self._space

    def step(self, action: np.ndarray) -> Obs:
        """Turns the one-hot ``action`` into an index and steps.

        Raises:
            ValueError: if ``action`` is not a one-hot vector of size n.
        """
        action = np.asarray(action)
        if action.shape != (self._n,):
            raise ValueError(f"action: expected one-hot of shape ({self._n},), got shape {action.shape}")
        rounded = np.round(action)
        # Straight-through samples can be off by float rounding (0.99999994).
        if np.count_nonzero(rounded == 1) != 1 or np.count_nonzero(rounded) != 1 or np.abs(action - rounded).max() > ONE_HOT_TOL:
            raise ValueError(f"action: expected a one-hot vector, got {action}")
        return self.env.step(np.asarray(int(np.argmax(rounded)) + self._offset, np.int64))  # the index, as a 0-d array


class ActionRepeat(Wrapper):
    """Repeats each action, summing rewards and stopping early at ``is_last``.

    Args:
        env: the environment.
        repeat: how many simulator steps per agent step (>= 1).
    """

    def __init__(self, env: Env, repeat: int) -> None:
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"ActionRepeat: repeat must be >= 1, got {repeat}")
        self.repeat = int(repeat)

    def step(self, action: np.ndarray) -> Obs:
        """Applies ``action`` up to ``repeat`` times; reward is the sum."""
        total = 0.0
        for _ in range(self.repeat):
            obs = self.env.step(action)
            total += float(obs["reward"])
            if obs["is_last"]:
                break
        obs = dict(obs)
        obs["reward"] = np.array(total, np.float32)
        return obs


class TimeLimit(Wrapper):
    """Ends episodes after ``steps`` agent steps.

    The last observation gets ``is_last=True`` but keeps ``is_terminal``
    as the inner environment set it (a time limit is not a termination).

    Args:
        env: the environment.
        steps: the episode length limit in (wrapped) steps (>= 1).
    """

    def __init__(self, env: Env, steps: int) -> None:
        super().__init__(env)
        if steps < 1:
            raise ValueError(f"TimeLimit: steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self._count = 0

    def reset(self, seed: int | None = None) -> Obs:
        """Resets the inner environment and the step counter."""
        self._count = 0
        return _reset(self.env, seed)

    def step(self, action: np.ndarray) -> Obs:
        """Steps and sets ``is_last`` once the limit is reached."""
        obs = self.env.step(action)
        self._count += 1
        if self._count >= self.steps and not obs["is_last"]:
            obs = dict(obs)
            obs["is_last"] = np.array(True)
        return obs


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, np.generic)):
        kind = "" if isinstance(value, np.ndarray) else f" numpy scalar {type(value).__name__}"
        return f"{value.dtype} {tuple(value.shape)}{kind}"
    return type(value).__name__


def _check_array(what: str, value: Any, space: Space) -> None:
    """Raises ValueError unless ``value`` matches ``space`` and is finite."""
    expected = f"{space.dtype} {space.shape}"
    if not isinstance(value, np.ndarray) or value.dtype != space.dtype or value.shape != space.shape:
        raise ValueError(f"{what}: expected {expected}, got {_describe(value)}")
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        raise ValueError(f"{what} has non-finite values: {value}")


_BASIC_SPACES = {
    "reward": Space(np.float32, ()),
    "is_first": Space(bool, ()),
    "is_last": Space(bool, ()),
    "is_terminal": Space(bool, ()),
}


class CheckSpaces(Wrapper):
    """Verifies observations and actions against the declared spaces.

    On every ``reset``/``step`` each key of ``obs_space`` must be present with
    exactly its dtype and shape, floating values must be finite, and no other
    key may appear (``log/`` keys excepted). Actions must be ``np.ndarray`` of
    the action space's dtype and shape, with finite values. It also checks the
    episode protocol: ``is_first`` only on reset, and no ``step`` before
    ``reset`` or after ``is_last``.

    Args:
        env: the environment to check; ``make`` applies this outermost.

    Raises:
        ValueError: on construction when the basic keys are declared wrongly.
    """

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        space = env.obs_space
        for key, expected in _BASIC_SPACES.items():
            got = space.get(key)
            if got is None or got.dtype != expected.dtype or got.shape != expected.shape:
                raise ValueError(f"obs_space '{key}': expected {expected.dtype} {expected.shape}, got {got}")
        self._needs_reset = True

    def reset(self, seed: int | None = None) -> Obs:
        """Resets (passing ``seed`` when given) and checks the first observation."""
        obs = _reset(self.env, seed)
        self._check_obs(obs, first=True)
        self._needs_reset = bool(obs["is_last"])
        return obs

    def step(self, action: np.ndarray) -> Obs:
        """Checks ``action``, steps, and checks the observation.

        Raises:
            ValueError: on a malformed action or observation.
            RuntimeError: when called before ``reset`` or after ``is_last``.
        """
        if self._needs_reset:
            raise RuntimeError("step() called before reset() or after is_last=True; call reset()")
        _check_array("action", action, self.env.act_space)
        obs = self.env.step(action)
        self._check_obs(obs, first=False)
        self._needs_reset = bool(obs["is_last"])
        return obs

    def _check_obs(self, obs: Obs, first: bool) -> None:
        if not isinstance(obs, dict):
            raise ValueError(f"observation: expected a dict, got {type(obs).__name__}")
        space = self.env.obs_space
        for key, sp in space.items():
            if key not in obs:
                raise ValueError(f"observation '{key}' is missing (keys: {sorted(obs)})")
            _check_array(f"observation '{key}'", obs[key], sp)
        extra = [k for k in obs if k not in space and not k.startswith("log/")]
        if extra:
            raise ValueError(f"observation has undeclared keys {extra} (declared: {list(space)})")
        if bool(obs["is_first"]) != first:
            raise ValueError(f"observation 'is_first' is {bool(obs['is_first'])} on {'reset' if first else 'step'}")
        if bool(obs["is_terminal"]) and not bool(obs["is_last"]):
            raise ValueError("observation 'is_terminal' is True but 'is_last' is False")


__all__ = [
    "ActionRepeat",
    "CheckSpaces",
    "NormalizeAction",
    "OneHotAction",
    "TimeLimit",
    "Wrapper",
]
