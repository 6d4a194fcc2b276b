"""Gymnasium environments behind the reverie contract.

Box observations become the float32 key ``vector`` (a Dict observation space
gives one key per entry); ``pixels`` mode renders ``rgb_array`` frames resized
to ``size``. Box actions are continuous (bounds in ``act_bounds``), Discrete
actions are indices (wrap with ``OneHotAction``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._gl import close_at_exit, ensure_headless_gl
from .base import BASIC_KEYS, RawEnv, Space, basic_spaces

ensure_headless_gl()


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a uint8 (H, W, C) image to ``size`` = (height, width).

    Uses area averaging when the size divides evenly, otherwise PIL's box
    filter when Pillow is installed, otherwise nearest-neighbour sampling.

    Args:
        image: uint8 (H, W, C) array.
        size: target (height, width).

    Returns:
        uint8 (height, width, C) array.
    """
    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(image, np.uint8)
    if h % height == 0 and w % width == 0:
        fh, fw = h // height, w // width
        blocks = image.reshape(height, fh, width, fw, -1).astype(np.float32)
        return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)
    try:
        from PIL import Image
    except ImportError:
        rows = (np.arange(height) + 0.5) * h / height
        cols = (np.arange(width) + 0.5) * w / width
        return np.ascontiguousarray(image[rows.astype(int)][:, cols.astype(int)], np.uint8)
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BOX)
    return np.asarray(resized, np.uint8).reshape(height, width, -1)


class Gym(RawEnv):
    """One gymnasium environment.

    Args:
        env_id: a registered gymnasium id, e.g. ``HalfCheetah-v5``.
        obs: ``vector``, ``pixels`` or ``both``.
        size: image (height, width) for pixels.
        seed: seeds the first reset and the action space.
        **kwargs: passed to ``gymnasium.make``.

    Raises:
        ValueError: for an unknown id or unsupported spaces.
    """

    def __init__(
        self,
        env_id: str,
        obs: str = "vector",
        size: tuple[int, int] = (64, 64),
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        if obs not in ("vector", "pixels", "both"):
            raise ValueError(f"obs must be 'vector', 'pixels' or 'both', got {obs!r}")
        import gymnasium

        self.name = env_id
        self._obs_mode = obs
        self._size = (int(size[0]), int(size[1]))
        self._seed: int | None = seed
        try:
            self._env = self._make(gymnasium, env_id, kwargs)
        except (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv) as err:
            raise ValueError(f"unknown gym id {env_id!r}: {err}") from None
        self._env.action_space.seed(seed)
        self._closed = False
        self._exit_hooked = False
        self._obs_keys = self._observation_keys(self._env.observation_space, gymnasium.spaces)
        self._act_space, self._act_bounds, self._act_start = self._action(self._env.action_space, gymnasium.spaces)

        space: dict[str, Space] = {}
        if obs in ("vector", "both"):
            for key, (sp, _) in self._obs_keys.items():
                space[key] = sp
        if obs in ("pixels", "both"):
            if "image" in space:
                raise ValueError(f"{env_id} already observes an image; use obs='vector'")
            space["image"] = Space(np.uint8, (*self._size, 3), 0, 255)
        space.update(basic_spaces())
        self._obs_space = space

    def _make(self, gymnasium: Any, env_id: str, kwargs: dict[str, Any]) -> Any:
        if self._obs_mode == "vector":
            return gymnasium.make(env_id, **kwargs)
        kwargs = {"render_mode": "rgb_array", **kwargs}
        height, width = self._size
        try:
            # MuJoCo envs can render at the target size directly: no resize.
            return gymnasium.make(env_id, width=width, height=height, **kwargs)
        except TypeError:
            return gymnasium.make(env_id, **kwargs)

    @staticmethod
    def _observation_keys(space: Any, spaces: Any) -> dict[str, tuple[Space, Any]]:
        """Maps gymnasium observation spaces to reverie keys and converters."""
        items = space.spaces.items() if isinstance(space, spaces.Dict) else [("vector", space)]
        keys: dict[str, tuple[Space, Any]] = {}
        for name, sub in items:
            key = "image" if name == "vector" and _is_image(sub, spaces) else name
            if key in BASIC_KEYS:
                raise ValueError(f"gym observation key {key!r} clashes with a reserved key")
            if _is_image(sub, spaces):
                keys[key] = (Space(np.uint8, sub.shape, 0, 255), lambda x: np.asarray(x, np.uint8))
            elif isinstance(sub, spaces.Box):
                size = max(1, int(np.prod(sub.shape)))
                keys[key] = (Space(np.float32, (size,)), lambda x: np.asarray(x, np.float32).reshape(-1))
            elif isinstance(sub, spaces.Discrete):
                n, start = int(sub.n), int(sub.start)
                keys[key] = (Space(np.float32, (n,), 0, 1), lambda x, n=n, s=start: np.eye(n, dtype=np.float32)[int(x) - s])
            else:
                raise ValueError(f"unsupported gym observation space for {name!r}: {sub}")
        return keys

    @staticmethod
    def _action(space: Any, spaces: Any) -> tuple[Space, tuple[np.ndarray, np.ndarray] | None, int]:
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            low = np.asarray(space.low, np.float32)
            high = np.asarray(space.high, np.float32)
            return Space(np.float32, space.shape, float(low.min()), float(high.max())), (low, high), 0
        if isinstance(space, spaces.Discrete):
            n = int(space.n)
            return Space(np.int64, (), 0, n - 1, discrete=True), None, int(space.start)
        raise ValueError(f"unsupported gym action space: {space}")

    @property
    def act_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension (low, high) for Box actions, None for Discrete."""
        return self._act_bounds

    @property
    def gym_env(self) -> Any:
        """The underlying gymnasium environment."""
        return self._env

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts an episode, seeded by ``seed`` or, the first time, the constructor's."""
        raw, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._seed = None
        return self._obs(raw, 0.0, first=True, last=False, terminal=False)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Applies a raw action: bounded floats or an index."""
        command = int(action) + self._act_start if self._act_space.discrete else action
        raw, reward, terminated, truncated, _ = self._env.step(command)
        terminated, truncated = bool(terminated), bool(truncated)
        return self._obs(raw, reward, first=False, last=terminated or truncated, terminal=terminated)

    def close(self) -> None:
        """Closes the gymnasium environment."""
        if not self._closed:
            self._closed = True
            self._env.close()

    def _obs(self, raw: Any, reward: float, first: bool, last: bool, terminal: bool) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self._obs_mode in ("vector", "both"):
            values = raw if isinstance(raw, dict) else {"vector": raw}
            for name, value in values.items():
                key = "image" if name == "vector" and "image" in self._obs_keys else name
                obs[key] = self._obs_keys[key][1](value)
        if self._obs_mode in ("pixels", "both"):
            obs["image"] = resize_image(np.asarray(self._env.render()), self._size)
            if not self._exit_hooked:  # after the GL context exists, see _gl
                self._exit_hooked = True
                close_at_exit(self)
        obs["reward"] = np.array(reward, np.float32)
        obs["is_first"] = np.array(first)
        obs["is_last"] = np.array(last)
        obs["is_terminal"] = np.array(terminal)
        return obs


def _is_image(space: Any, spaces: Any) -> bool:
    return isinstance(space, spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3
