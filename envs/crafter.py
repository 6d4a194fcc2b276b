"""Crafter (Hafner 2021) behind the reverie contract.

``crafter/reward`` is the benchmark task; ``crafter/noreward`` gives reward 0
(the task's reward stays visible as ``log/reward``). Observations are the 64×64
RGB ``image`` plus the basic keys; 17 discrete actions. An episode ends on
death (``is_terminal``) or after crafter's own 10,000 steps (``is_last`` only).

Every observation also carries diagnostics that never reach the model:
``log/achievement_<name>`` (int32: how often each of the 22 achievements was
unlocked so far this episode, 0 at reset) and ``log/reward`` (float32: the
task reward of the step, also under ``noreward``). The values on the
``is_last`` observation are the episode's achievements; the Crafter score
(``bench/crafter_score.py``) is computed from them. With ``stats_file`` the env
also appends one JSON line per finished episode, in the format of crafter's
own ``Recorder`` (``stats.jsonl``): ``{"length", "reward",
"achievement_<name>"...}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import RawEnv, Space, basic_spaces

#: Crafter's tasks (``crafter/<task>``).
TASKS = ("reward", "noreward")
#: Agent steps per episode (crafter's own ``length``).
CRAFTER_LENGTH = 10_000


def achievement_names() -> list[str]:
    """The 22 achievements, in crafter's order (``collect_coal`` ... ``wake_up``)."""
    import crafter

    return list(crafter.constants.achievements)


class Crafter(RawEnv):
    """The Crafter survival game.

    Args:
        task: ``reward`` or ``noreward``.
        size: image (height, width).
        seed: world seed; episode k of a seed gets its own world.
        length: steps per episode (crafter's default 10,000).
        area: world size in cells.
        view: the local view in cells.
        stats_file: optional path of a JSONL file that gets one line per
            finished episode (death or ``length``).

    Raises:
        ValueError: for an unknown task.
    """

    def __init__(
        self,
        task: str = "reward",
        size: tuple[int, int] = (64, 64),
        seed: int = 0,
        length: int = CRAFTER_LENGTH,
        area: tuple[int, int] = (64, 64),
        view: tuple[int, int] = (9, 9),
        stats_file: str | Path | None = None,
    ) -> None:
        if task not in TASKS:
            valid = ", ".join(f"crafter/{t}" for t in TASKS)
            raise ValueError(f"unknown crafter task {task!r}; valid: {valid}")
        import crafter

        self.name = task
        self._size = (int(size[0]), int(size[1]))
        self._env = crafter.Env(area=area, view=view, size=self._size, reward=task == "reward", length=length, seed=seed)
        self._achievements = list(crafter.constants.achievements)
        self._stats_file = Path(stats_file) if stats_file else None
        self._length = 0
        self._return = 0.0
        space = {"image": Space(np.uint8, (*self._size, 3), 0, 255)}
        space.update(basic_spaces())
        self._obs_space = space
        self._n_actions = int(self._env.action_space.n)
        self._act_space = Space(np.int64, (), 0, self._n_actions - 1, discrete=True)

    @property
    def action_names(self) -> list[str]:
        """Crafter's name of each action index (``noop``, ``move_left``, ...)."""
        return list(self._env.action_names)

    @property
    def achievements(self) -> list[str]:
        """The achievement names behind the ``log/achievement_<name>`` keys."""
        return list(self._achievements)

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts an episode; a ``seed`` restarts the world sequence of that seed."""
        if seed is not None:
            # crafter 1.8.3 draws episode k's world from hash((seed, k)); there
            # is no public way to reseed, so set both (the version is pinned).
            self._env._seed = int(seed)
            self._env._episode = 0
        image = self._env.reset()
        self._length, self._return = 0, 0.0
        return self._obs(image, 0.0, 0.0, dict.fromkeys(self._achievements, 0), first=True, last=False, terminal=False)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Applies one action."""
        index = int(action)
        if not 0 <= index < self._n_actions:
            raise ValueError(f"action index {index} outside [0, {self._n_actions})")
        image, reward, done, info = self._env.step(index)
        self._length += 1
        self._return += float(info["reward"])
        if done and self._stats_file is not None:
            self._write_stats(self._stats_file, info["achievements"])
        terminal = info["discount"] == 0
        return self._obs(image, reward, info["reward"], info["achievements"], first=False, last=bool(done), terminal=bool(terminal))

    def close(self) -> None:
        """Nothing to free."""

    def _obs(
        self, image: np.ndarray, reward: float, task_reward: float, achievements: dict[str, int], first: bool, last: bool, terminal: bool
    ) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {
            "image": np.asarray(image, np.uint8),
            "reward": np.array(reward, np.float32),
            "is_first": np.array(first),
            "is_last": np.array(last),
            "is_terminal": np.array(terminal),
            "log/reward": np.array(task_reward, np.float32),
        }
        for name in self._achievements:
            obs[f"log/achievement_{name}"] = np.array(achievements[name], np.int32)
        return obs

    def _write_stats(self, path: Path, achievements: dict[str, int]) -> None:
        stats = {"length": self._length, "reward": round(self._return, 1)}
        stats.update({f"achievement_{k}": int(v) for k, v in achievements.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(stats) + "\n")
