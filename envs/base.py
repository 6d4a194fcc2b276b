"""The environment contract every reverie environment follows.

An environment returns observations as a dict of numpy arrays. Sensor keys are
named (``image``: uint8 H×W×C; vectors such as ``position``: float32 1-D), and
four keys are always present: ``reward`` (float32 scalar), ``is_first``,
``is_last`` and ``is_terminal`` (bool scalars). Keys that start with ``log/``
are diagnostics and never reach the model.

Actions are one float32 array: values in [-1, 1] for continuous spaces (the
wrappers rescale to the simulator's bounds) and a one-hot vector for discrete
spaces (the wrappers turn it into an index).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Keys present in every observation besides the sensors.
BASIC_KEYS = ("reward", "is_first", "is_last", "is_terminal")


@dataclasses.dataclass(frozen=True)
class Space:
    """Dtype, shape and bounds of one array.

    Args:
        dtype: numpy dtype of the array.
        shape: shape of the array (no batch dimensions).
        low: lower bound (inclusive), or None when unbounded.
        high: upper bound (inclusive), or None when unbounded.
        discrete: True for a discrete action space; then ``shape`` is the
            one-hot size ``(n,)``.
    """

    dtype: Any
    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    discrete: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(int(x) for x in self.shape))

    @property
    def is_image(self) -> bool:
        """True for uint8 H×W×C arrays."""
        return self.dtype == np.uint8 and len(self.shape) == 3

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One uniform draw: a one-hot for a discrete space, else uniform in ``[low, high]``.

        A missing or infinite bound counts as -1 or 1, the range of an action.
        """
        if self.discrete:
            value = np.zeros(self.shape, self.dtype)
            value[rng.integers(self.shape[0])] = 1
            return value
        low = -1.0 if self.low is None or not math.isfinite(self.low) else float(self.low)
        high = 1.0 if self.high is None or not math.isfinite(self.high) else float(self.high)
        return rng.uniform(low, high, self.shape).astype(self.dtype)


@runtime_checkable
class Env(Protocol):
    """What an environment offers the agent and the loops."""

    @property
    def obs_space(self) -> dict[str, Space]:
        """Every observation key, the basic keys included."""

    @property
    def act_space(self) -> Space:
        """The action: float32 ``(A,)`` in [-1, 1], or one-hot ``(n,)``."""

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts an episode; the observation has ``is_first=True``.

        A given ``seed`` makes the episode reproducible (same seed, same
        actions: same observations); None continues the environment's stream.
        """

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Applies one action and returns the next observation."""

    def close(self) -> None:
        """Frees the simulator."""


class RawEnv:
    """Base of the raw environments (before the wrappers): the spaces they set once in ``__init__``.

    Subclasses assign ``self._obs_space`` (sensor keys plus :func:`basic_spaces`)
    and ``self._act_space`` (the simulator's own action: float32 ``(A,)`` with
    per-dimension bounds, or an int64 index for discrete actions).
    """

    _obs_space: dict[str, Space]
    _act_space: Space

    @property
    def obs_space(self) -> dict[str, Space]:
        """Sensor keys plus the basic keys."""
        return self._obs_space

    @property
    def act_space(self) -> Space:
        """The raw action space."""
        return self._act_space


#: Which dtype kinds a value may have, by the kind of the array it goes into, besides that array's own dtype:
#: numbers widen into floats and integers serve as flags; nothing else converts.
_CONVERTS_TO = {"f": "fiub", "b": "biu"}


def zero_action(space: Space) -> np.ndarray:
    """The neutral action: zeros (clipped into the bounds), or one-hot index 0.

    The control loop's ``zero`` safe action, and what a delayed action pipe
    applies before its first action arrives.

    Args:
        space: the action space.

    Returns:
        An array of ``space.dtype`` and ``space.shape``.
    """
    action = np.zeros(space.shape, space.dtype)
    if space.discrete:
        action.reshape(-1)[0] = 1
        return action
    low = -np.inf if space.low is None else space.low
    high = np.inf if space.high is None else space.high
    return np.clip(action, low, high).astype(space.dtype)


def dtype_fits(given: np.dtype, expected: np.dtype) -> bool:
    """Whether a value of dtype ``given`` may be stored into an array of dtype ``expected`` without changing meaning.

    Images must already be uint8: a float image in [0, 1] stored as uint8 would
    silently become zeros.
    """
    return given == expected or given.kind in _CONVERTS_TO.get(expected.kind, "")


#: Float arrays up to this many numbers are checked one by one in Python (~1 µs for a proprioceptive sensor),
#: larger ones with numpy (``isfinite`` then ``all``: two calls of ~1.5 µs fixed cost each, whatever the size).
_CHECK_IN_PYTHON = 32


def all_finite(value: np.ndarray) -> bool:
    """Whether every number of a float or complex array is finite (True for other dtypes).

    The control loop, the policy runtime and the recorder each check every
    tick's observation and action, so this is on a robot's critical path.
    """
    kind = value.dtype.kind
    if kind == "f" and value.size <= _CHECK_IN_PYTHON:
        return all(map(math.isfinite, value.ravel().tolist()))
    if kind in "fc":
        return bool(np.isfinite(value).all())
    return True


def basic_spaces() -> dict[str, Space]:
    """Spaces of the keys every observation has: reward, is_first, is_last, is_terminal."""
    return {
        "reward": Space(np.float32, ()),
        "is_first": Space(bool, ()),
        "is_last": Space(bool, ()),
        "is_terminal": Space(bool, ()),
    }


def model_keys(obs_space: dict[str, Space]) -> list[str]:
    """Sensor keys the model sees: all but the basic keys and ``log/`` keys."""
    return [k for k in obs_space if k not in BASIC_KEYS and not k.startswith("log/")]
