"""Deterministic fake environments for tests; no physics needed.

The task: follow a moving target. ``target(t)`` is a fixed sinusoid per action
dimension (phases drawn from ``seed``). The observation shows the target for
the coming step, so a learner can in principle reach the best reward:

* continuous: ``reward = -mean(|a - target(t)|)`` with ``a`` in [-1, 1]
  (the raw action is mapped back from ``bounds``), best 0;
* discrete: ``reward = 1`` when the chosen index equals the target index
  (the target's first dimension quantised into ``act_dim`` bins), else 0.

Observations depend only on the step count and the actions. ``fault`` injects
a malformed observation at step ``fault_at`` (0 = reset) to test ``CheckSpaces``.
"""

from __future__ import annotations

import numpy as np

from .base import RawEnv, Space, basic_spaces

#: Faults ``FakeEnv`` can inject into an observation.
FAULTS = ("nan", "dtype", "shape", "missing", "extra")


class FakeEnv(RawEnv):
    """A fixed-length follow-the-target task.

    Args:
        obs: ``vector`` (keys ``target``, ``prev_action``, ``progress``) or
            ``pixels`` (key ``image``).
        discrete: discrete actions (raw action: an int index) instead of
            continuous ones (raw action: float32 within ``bounds``).
        length: steps per episode; the last has ``is_last=True``.
        act_dim: action dimensions, or the number of discrete actions.
        seed: picks the target's phases.
        terminal: whether the episode end is a termination (``is_terminal``)
            rather than a truncation.
        size: image (height, width).
        bounds: raw action bounds (low, high) for continuous actions.
        fault: one of ``FAULTS`` or None.
        fault_at: the step whose observation gets the fault (0 = reset).
    """

    def __init__(
        self,
        obs: str = "vector",
        discrete: bool = False,
        length: int = 50,
        act_dim: int = 3,
        seed: int = 0,
        terminal: bool = False,
        size: tuple[int, int] = (64, 64),
        bounds: tuple[float, float] = (-1.0, 1.0),
        fault: str | None = None,
        fault_at: int = 1,
    ) -> None:
        if obs not in ("vector", "pixels"):
            raise ValueError(f"obs must be 'vector' or 'pixels', got {obs!r}")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        if length < 1 or act_dim < 1 or (discrete and act_dim < 2):
            raise ValueError(f"bad length={length} or act_dim={act_dim}")
        self._obs_mode = obs
        self._discrete = discrete
        self._length = int(length)
        self._n = int(act_dim)
        self._terminal = terminal
        self._size = (int(size[0]), int(size[1]))
        self._low, self._high = float(bounds[0]), float(bounds[1])
        self._fault = fault
        self._fault_at = int(fault_at)
        self._phase = _phases(seed, self._n)
        self._t = 0
        self._prev = np.zeros(self._n, np.float32)
        self.last_action: np.ndarray | None = None

        if discrete:
            self._act_space = Space(np.int64, (), 0, self._n - 1, discrete=True)
        else:
            self._act_space = Space(np.float32, (self._n,), self._low, self._high)
        space: dict[str, Space] = {}
        if obs == "vector":
            space["target"] = Space(np.float32, (self._n,), -1, 1)
            space["prev_action"] = Space(np.float32, (self._n,), -1, 1)
            space["progress"] = Space(np.float32, (1,), 0, 1)
        else:
            space["image"] = Space(np.uint8, (*self._size, 3), 0, 255)
        space.update(basic_spaces())
        self._obs_space = space

    @property
    def act_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension raw bounds (continuous only)."""
        if self._discrete:
            return None
        return (np.full(self._n, self._low, np.float32), np.full(self._n, self._high, np.float32))

    def target(self, t: int) -> np.ndarray:
        """The target in [-1, 1] that the action at step ``t`` is scored against.

        For discrete actions it is one-hot of the target index.
        """
        wave = np.sin(2 * np.pi * t / 16.0 + self._phase).astype(np.float32)
        if not self._discrete:
            return wave
        return np.eye(self._n, dtype=np.float32)[self.target_index(t)]

    def target_index(self, t: int) -> int:
        """The best discrete action at step ``t``."""
        wave = np.sin(2 * np.pi * t / 16.0 + self._phase[0])
        return int(min(self._n - 1, (wave + 1.0) / 2.0 * self._n))

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts an episode; a ``seed`` redraws the target's phases."""
        if seed is not None:
            self._phase = _phases(seed, self._n)
        self._t = 0
        self._prev = np.zeros(self._n, np.float32)
        return self._obs(0.0, first=True)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Scores ``action`` against ``target(t)`` and advances one step."""
        self.last_action = np.array(action)
        if self._discrete:
            index = int(action)
            if not 0 <= index < self._n:
                raise ValueError(f"action index {index} outside [0, {self._n})")
            reward = float(index == self.target_index(self._t))
            self._prev = np.eye(self._n, dtype=np.float32)[index]
        else:
            raw = np.asarray(action, np.float64).reshape(self._n)
            unit = 2.0 * (raw - self._low) / (self._high - self._low) - 1.0
            reward = -float(np.mean(np.abs(unit - self.target(self._t))))
            self._prev = np.clip(unit, -1, 1).astype(np.float32)
        self._t += 1
        return self._obs(reward, first=False)

    def close(self) -> None:
        """Nothing to free."""

    def _obs(self, reward: float, first: bool) -> dict[str, np.ndarray]:
        last = self._t >= self._length
        target = self.target(self._t)
        obs: dict[str, np.ndarray] = {}
        if self._obs_mode == "vector":
            obs["target"] = target
            obs["prev_action"] = self._prev.copy()
            obs["progress"] = np.array([self._t / self._length], np.float32)
        else:
            obs["image"] = self._image(target)
        obs["reward"] = np.array(reward, np.float32)
        obs["is_first"] = np.array(first)
        obs["is_last"] = np.array(last)
        obs["is_terminal"] = np.array(last and self._terminal)
        if self._fault is not None and self._t == self._fault_at:
            self._inject(obs)
        return obs

    def _image(self, target: np.ndarray) -> np.ndarray:
        """Horizontal bands, one per dimension: red = target, green = last action."""
        height, width = self._size
        band = np.minimum(np.arange(height) * self._n // height, self._n - 1)
        image = np.zeros((height, width, 3), np.uint8)
        image[:, :, 0] = ((target[band] + 1.0) * 127.5).astype(np.uint8)[:, None]
        image[:, :, 1] = ((self._prev[band] + 1.0) * 127.5).astype(np.uint8)[:, None]
        image[:, : max(1, width * self._t // self._length), 2] = 255
        return image

    def _inject(self, obs: dict[str, np.ndarray]) -> None:
        key = next(iter(obs))
        if self._fault == "nan":
            key = "target" if "target" in obs else "reward"
            obs[key] = obs[key].copy()
            obs[key].reshape(-1)[0] = np.nan
        elif self._fault == "dtype":
            obs[key] = obs[key].astype(np.float64)
        elif self._fault == "shape":
            obs[key] = obs[key][..., :-1]
        elif self._fault == "missing":
            del obs[key]
        elif self._fault == "extra":
            obs["surprise"] = np.zeros(1, np.float32)


def _phases(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 2 * np.pi, n)


class FakeClock:
    """A monotonic clock that moves only when told, for deterministic timing tests.

    Pass the instance as ``clock`` and its ``sleep`` as ``sleep`` (to a
    ``ControlLoop`` or a ``MuJoCoRobot``): sleeping advances the clock.

    Args:
        start: the initial reading in seconds.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        """The current reading in seconds."""
        return self.now

    def sleep(self, seconds: float) -> None:
        """Advances the clock by ``seconds`` (negative values do nothing)."""
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Moves the clock forward by ``seconds``, as time passing in the world would."""
        self.now += seconds
