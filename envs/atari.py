"""Atari 2600 games (the Arcade Learning Environment) behind the reverie contract.

The defaults follow the Atari protocol of DreamerV3's first release
(danijar/dreamerv3 at ec526b9, ``dreamerv3/configs.yaml``: ``env.atari: {size:
[64, 64], repeat: 4, sticky: True, gray: False, actions: all, lives: unused,
noops: 0}``, and ``embodied/envs/atari.py``: ``length=108000`` frames, max-pool
over the last two frames of a repeat):

* action repeat 4, done here (not by the generic ``ActionRepeat`` wrapper) so
  that the observation is the pixel-wise maximum of the last two frames of the
  repeat (Atari sprites flicker between frames);
* sticky actions: ALE repeats the previous action with probability 0.25 on
  every frame (``repeat_action_probability``);
* 64×64 RGB frames (``gray=True`` gives 64×64×1 luminance);
* the full set of 18 actions (``actions="minimal"`` gives the game's own set);
* no random no-ops at reset (``noops=0``). DreamerV2 differs here: its
  ``common.Atari`` (danijar/dreamerv2, ``dreamerv2/common/envs.py``) runs
  gym's ``AtariPreprocessing`` with ``noops=30`` and the minimal action set,
  gray frames;
* losing a life does not end the episode (``life_done=True`` makes it a
  termination);
* episodes are cut after 108,000 frames (30 minutes of play, 27,000 agent
  steps at repeat 4): ``is_last`` without ``is_terminal``. Game over sets both.

Rewards are the raw game scores (the agent squashes them). The ROMs ship with
ale-py (>= 0.9), so nothing is downloaded.
"""

from __future__ import annotations

import difflib
import threading
from typing import Any

import numpy as np

from .base import RawEnv, Space, basic_spaces

#: The 26 games of the Atari 100k benchmark (ALE ROM ids).
ATARI100K_GAMES = (
    "alien",
    "amidar",
    "assault",
    "asterix",
    "bank_heist",
    "battle_zone",
    "boxing",
    "breakout",
    "chopper_command",
    "crazy_climber",
    "demon_attack",
    "freeway",
    "frostbite",
    "gopher",
    "hero",
    "jamesbond",
    "kangaroo",
    "krull",
    "kung_fu_master",
    "ms_pacman",
    "pong",
    "private_eye",
    "qbert",
    "road_runner",
    "seaquest",
    "up_n_down",
)
#: Other spellings accepted for ROM ids.
ALIASES = {"james_bond": "jamesbond"}
#: Luminance weights of ``gray`` frames (ITU-R BT.601).
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
#: Frames per episode before the cut: 30 minutes at 60 frames per second.
MAX_FRAMES = 108_000

# Loading ROMs from several threads at once is not safe in ALE.
_LOCK = threading.Lock()


def atari_games() -> list[str]:
    """Every game ale-py ships a ROM for (ALE ids such as ``pong``, ``ms_pacman``)."""
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


class Atari(RawEnv):
    """One Atari game.

    Args:
        game: ALE ROM id, e.g. ``pong``, ``ms_pacman`` (``james_bond`` is
            accepted for ``jamesbond``).
        repeat: frames per agent step; rewards are summed and the observation
            is the maximum of the last two frames.
        size: image (height, width).
        gray: luminance images with one channel instead of RGB.
        sticky: ALE's ``repeat_action_probability`` (0.25; 0 disables).
        actions: ``all`` (the 18 actions of the console) or ``minimal`` (the
            ones the game uses).
        noops: at most this many no-op frames (uniformly 0..noops) after reset.
        life_done: end the episode as a termination when a life is lost.
        length: frames per episode before the cut (``is_last`` only); 0 for none.
        seed: seeds ALE (sticky actions) and the no-op count of the first reset.

    Raises:
        ValueError: for an unknown game or a bad option.
    """

    def __init__(
        self,
        game: str,
        repeat: int = 4,
        size: tuple[int, int] = (64, 64),
        gray: bool = False,
        sticky: float = 0.25,
        actions: str = "all",
        noops: int = 0,
        life_done: bool = False,
        length: int = MAX_FRAMES,
        seed: int = 0,
    ) -> None:
        import ale_py
        from ale_py import roms

        game = ALIASES.get(game, game)
        valid = sorted(roms.get_all_rom_ids())
        if game not in valid:
            close = difflib.get_close_matches(game, valid, n=3)
            hint = f"did you mean {', '.join(f'atari/{c}' for c in close)}? " if close else ""
            raise ValueError(f"unknown atari game {game!r}; {hint}valid: {', '.join(valid)}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        if actions not in ("all", "minimal"):
            raise ValueError(f"actions must be 'all' or 'minimal', got {actions!r}")
        if not 0.0 <= sticky < 1.0 or noops < 0 or length < 0:
            raise ValueError(f"bad sticky={sticky}, noops={noops} or length={length}")
        self.name = game
        self.repeat = int(repeat)
        self.sticky = float(sticky)
        self.noops = int(noops)
        self.life_done = bool(life_done)
        self.length = int(length)
        self.gray = bool(gray)
        self._size = (int(size[0]), int(size[1]))
        rom = roms.get_rom_path(game)
        if rom is None:  # listed, but the ROM file is not installed
            raise ValueError(f"atari/{game}: ale-py has no ROM file for it")
        self._rom = rom
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        self._ale = ale_py.ALEInterface()
        self._ale.setFloat("repeat_action_probability", self.sticky)
        self._load(seed)
        legal = self._ale.getLegalActionSet() if actions == "all" else self._ale.getMinimalActionSet()
        self._actions = list(legal)
        self._noop = ale_py.Action.NOOP
        height, width = self._ale.getScreenDims()
        # Two screen buffers: the maximum of the last two frames is observed.
        self._frames = [np.zeros((height, width, 3), np.uint8) for _ in range(2)]
        self._rng = np.random.default_rng(seed)
        self._lives = 0
        self._frame = 0

        channels = 1 if self.gray else 3
        space = {"image": Space(np.uint8, (*self._size, channels), 0, 255)}
        space.update(basic_spaces())
        self._obs_space = space
        self._act_space = Space(np.int64, (), 0, len(self._actions) - 1, discrete=True)

    def _load(self, seed: int) -> None:
        # ALE reads its seed when the ROM is loaded (as gymnasium's AtariEnv does).
        with _LOCK:
            self._ale.setInt("random_seed", int(seed) % 2**31)
            self._ale.loadROM(self._rom)

    @property
    def action_names(self) -> list[str]:
        """ALE's name of each action index, e.g. ``NOOP``, ``FIRE``."""
        return [a.name for a in self._actions]

    @property
    def ale(self) -> Any:
        """The ``ale_py.ALEInterface``."""
        return self._ale

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts a new game; a ``seed`` reseeds ALE (None continues its stream)."""
        if seed is not None:
            self._load(seed)
            self._rng = np.random.default_rng(seed)
        with _LOCK:
            self._ale.reset_game()
        for _ in range(int(self._rng.integers(self.noops + 1)) if self.noops else 0):
            self._ale.act(self._noop)
            if self._ale.game_over():
                self._ale.reset_game()
        self._lives = self._ale.lives()
        self._frame = 0
        self._ale.getScreenRGB(self._frames[0])
        return self._obs(self._frames[0], 0.0, first=True, last=False, terminal=False)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Plays the action ``repeat`` frames (fewer when the game ends)."""
        index = int(action)
        if not 0 <= index < len(self._actions):
            raise ValueError(f"action index {index} outside [0, {len(self._actions)})")
        act = self._actions[index]
        reward = 0.0
        terminal = last = False
        grabbed = 0
        for i in range(self.repeat):
            reward += self._ale.act(act)
            self._frame += 1
            over = self._ale.game_over()
            lives = self._ale.lives()
            lost = self.life_done and lives < self._lives
            self._lives = lives
            terminal = over or lost
            last = terminal or (self.length > 0 and self._frame >= self.length)
            if i >= self.repeat - 2 or last:
                self._ale.getScreenRGB(self._frames[grabbed])
                grabbed += 1
            if last:
                break
        image = self._frames[0] if grabbed == 1 else np.maximum(self._frames[0], self._frames[1])
        return self._obs(image, reward, first=False, last=last, terminal=terminal)

    def close(self) -> None:
        """Nothing to free (ALE is released with the object)."""

    def _obs(self, frame: np.ndarray, reward: float, first: bool, last: bool, terminal: bool) -> dict[str, np.ndarray]:
        image = _resize(frame, self._size)
        if self.gray:
            image = np.round(image.astype(np.float32) @ GRAY_WEIGHTS).astype(np.uint8)[..., None]
        return {
            "image": image,
            "reward": np.array(reward, np.float32),
            "is_first": np.array(first),
            "is_last": np.array(last),
            "is_terminal": np.array(terminal),
        }


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-averages a (210, 160, 3) screen to ``size`` with Pillow's box filter."""
    from PIL import Image

    height, width = size
    if frame.shape[:2] == (height, width):
        return frame.copy()
    return np.array(Image.fromarray(frame).resize((width, height), Image.Resampling.BOX), np.uint8)
