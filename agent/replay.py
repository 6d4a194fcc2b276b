"""Replay: an in-memory ring of steps, persisted to disk in chunks.

Every step holds the observation, the action taken after it and the model's
latent state after observing it (``deter``, ``stoch`` as class indices). The
latents are refreshed by training (``update_latents``) and used as the start
state of sampled sequences, so a sequence need not be warmed up from zeros
(the official ``replay_context``).

Rows found invalid (values outside their meaning, see
:class:`reverie.envs.step_spec.StepSpec`) can be quarantined: no sampled
sequence contains one, until new data overwrites it.

On disk (``directory``): ``chunk_XXXXXXXX.npz`` per ``chunk_size`` completed
steps (written once, as they fill), and on ``save()`` the partial chunk, the
latents, ``quarantine.npz`` (the step indices of quarantined rows) and
``replay.json`` with the step count. ``load()`` restores exactly the state of
the last ``save()``: chunks written after it are ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

LATENT_KEYS = ("deter", "stoch")
QUARANTINE_FILE = "quarantine.npz"


class Replay:
    """Uniform replay of fixed-length sequences.

    Args:
        capacity: steps kept; the oldest are dropped first.
        seq_len: length of sampled sequences (batch length + 1 context step).
        directory: where chunks are written; None keeps everything in memory.
        chunk_size: steps per chunk file.
        seed: seed of the sampling generator.
        write: False reads ``directory`` (``load``) but never writes it: the
            replays of data-parallel ranks other than 0, which hold the same
            steps as rank 0's.
    """

    def __init__(
        self,
        *,
        capacity: int,
        seq_len: int,
        directory: str | Path | None = None,
        chunk_size: int = 1024,
        seed: int = 0,
        write: bool = True,
    ) -> None:
        if capacity < seq_len:
            raise ValueError(f"replay capacity {capacity} is smaller than the sequence length {seq_len}")
        self.capacity, self.seq_len, self.chunk_size = int(capacity), int(seq_len), int(chunk_size)
        self.directory = Path(directory) if directory else None
        self.write = write
        self.rng = np.random.default_rng(seed)
        self.total = 0  # steps ever added
        self.data: dict[str, np.ndarray] = {}
        #: per storage position: quarantined (never part of a sampled sequence).
        self.bad = np.zeros(0, bool)

    # ------------------------------------------------------------- storage
    def __len__(self) -> int:
        return min(self.total, self.capacity)

    def _allocate(self, step: dict[str, np.ndarray]) -> None:
        # np.zeros maps pages lazily, so a large capacity costs nothing until filled.
        self.data = {k: np.zeros((self.capacity, *np.shape(v)), np.asarray(v).dtype) for k, v in step.items()}
        self.bad = np.zeros(self.capacity, bool)

    def add(self, step: dict[str, np.ndarray]) -> None:
        """Appends one step (a dict of unbatched arrays; ``log/`` keys are dropped)."""
        step = {k: v for k, v in step.items() if not k.startswith("log/")}
        if not self.data:
            self._allocate(step)
        if step.keys() != self.data.keys():
            raise ValueError(f"replay step keys {sorted(step)} differ from stored keys {sorted(self.data)}")
        pos = self.total % self.capacity
        for k, v in step.items():
            self.data[k][pos] = v
        self.bad[pos] = False
        self.total += 1
        if self.directory and self.write and self.total % self.chunk_size == 0:
            self._write_chunk(self.total // self.chunk_size - 1)

    def extend(self, steps: dict[str, np.ndarray]) -> None:
        """Appends consecutive steps ``{key: [T, ...]}`` at once (same result as T ``add`` calls)."""
        steps = {k: np.asarray(v) for k, v in steps.items() if not k.startswith("log/")}
        count = len(next(iter(steps.values())))
        if count == 0:
            return
        if not self.data:
            self._allocate({k: v[0] for k, v in steps.items()})
        if steps.keys() != self.data.keys():
            raise ValueError(f"replay step keys {sorted(steps)} differ from stored keys {sorted(self.data)}")
        if count > self.capacity:
            raise ValueError(f"{count} steps do not fit a replay of capacity {self.capacity}")
        pos = self._positions(self.total, self.total + count)
        for k, v in steps.items():
            self.data[k][pos] = v
        self.bad[pos] = False
        before, self.total = self.total, self.total + count
        if self.directory and self.write:
            for index in range(before // self.chunk_size, self.total // self.chunk_size):
                self._write_chunk(index)

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:08d}.npz"

    def _positions(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop) % self.capacity

    def _write_chunk(self, index: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        pos = self._positions(index * self.chunk_size, (index + 1) * self.chunk_size)
        arrays = {k: v[pos] for k, v in self.data.items() if k not in LATENT_KEYS}
        _atomic_savez(self._chunk_path(index), arrays)
        # Drop chunks that fell out of the capacity window.
        oldest = (self.total - self.capacity) // self.chunk_size
        for old in range(max(0, oldest - 4), oldest):
            self._chunk_path(old).unlink(missing_ok=True)

    # ------------------------------------------------------------ sampling
    def sample(self, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Uniformly sampled sequences (none holds a quarantined row).

        Returns:
            ``{key: [B, L, ...]}`` and the storage positions ``[B, L]`` (for
            :meth:`update_latents`).

        Raises:
            ValueError: when replay holds no sequence to sample.
        """
        first = self.first
        last_start = self.total - self.seq_len
        if last_start < first:
            raise ValueError(f"replay holds {len(self)} steps; need at least {self.seq_len} to sample")
        starts = self.rng.integers(first, last_start + 1, size=batch)
        pos = (starts[:, None] + np.arange(self.seq_len)[None]) % self.capacity  # [B, L]
        if self.quarantined:  # with none, the draws are exactly those of a replay that never had any
            pos = self._avoid_quarantine(pos, first, last_start)
        return {k: v[pos] for k, v in self.data.items()}, pos

    def _avoid_quarantine(self, pos: np.ndarray, first: int, last_start: int) -> np.ndarray:
        # Uniform over the clean sequences: redraw the starts that hit a quarantined row.
        offsets = np.arange(self.seq_len)[None]
        for _ in range(32):
            hit = self.bad[pos].any(1)
            if not hit.any():
                return pos
            starts = self.rng.integers(first, last_start + 1, size=int(hit.sum()))
            pos[hit] = (starts[:, None] + offsets) % self.capacity
        # Mostly quarantined: list the clean starts once (bad rows per window, by a running sum).
        count = last_start - first + 1
        hits = np.concatenate([[0], np.cumsum(self.bad[np.arange(first, last_start + self.seq_len) % self.capacity])])
        clean = first + np.flatnonzero(hits[self.seq_len : self.seq_len + count] == hits[:count])
        if not len(clean):
            raise ValueError(f"every sequence in replay holds a quarantined row ({self.quarantined} of {len(self)} rows quarantined)")
        return (self.rng.choice(clean, size=len(pos))[:, None] + offsets) % self.capacity

    # ---------------------------------------------------------- quarantine
    @property
    def quarantined(self) -> int:
        """Rows quarantined now."""
        return int(self.bad.sum()) if len(self.bad) else 0

    def quarantine(self, pos: np.ndarray) -> int:
        """Marks storage positions as never to be sampled; returns how many were new."""
        pos = np.unique(np.asarray(pos, np.int64).ravel())
        new = int((~self.bad[pos]).sum())
        self.bad[pos] = True
        return new

    def held_steps(self) -> np.ndarray:
        """Step indices (0 … total−1) of the rows replay holds, oldest first."""
        return np.arange(self.first, self.total)

    def scan(self, bad_rows, keys: list[str] | None = None, block: int = 65536) -> np.ndarray:
        """Step indices of the held rows that ``bad_rows({key: [N, ...]}) → [N] mask`` flags, in blocks of ``block`` rows.

        ``keys``: the keys ``bad_rows`` reads (default all); leaving out the
        images spares copying them, block by block, through the whole replay.
        """
        held = self.held_steps()
        found = []
        for start in range(0, len(held), block):
            steps = held[start : start + block]
            mask = bad_rows({k: self.data[k][steps % self.capacity] for k in (keys or self.data)})
            found.append(steps[mask])
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    @property
    def first(self) -> int:
        """Number of the oldest step held (steps are numbered from 0 as they were added)."""
        return max(0, self.total - self.capacity)

    def read(self, start: int, stop: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start … stop − 1`` (numbered as added) in order: ``{key: [stop − start, ...]}`` copies."""
        _check_range(start, stop, self.first, self.total, "replay")
        pos = self._positions(start, stop)
        return {k: self.data[k][pos] for k in (keys or self.data)}

    def update_latents(self, pos: np.ndarray, latents: dict[str, np.ndarray]) -> None:
        """Writes refreshed latents at storage positions ``pos`` ``[B, T]``."""
        for k, v in latents.items():
            self.data[k][pos] = v

    # ---------------------------------------------------------- persistence
    def save(self) -> None:
        """Makes the on-disk replay equal to the in-memory one."""
        if not self.directory or not self.write or not self.data:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        done = self.total // self.chunk_size
        partial = self._positions(done * self.chunk_size, self.total)
        _atomic_savez(self.directory / "partial.npz", {k: v[partial] for k, v in self.data.items() if k not in LATENT_KEYS})
        held = self._positions(max(0, self.total - self.capacity), self.total)
        _atomic_savez(self.directory / "latents.npz", {k: self.data[k][held] for k in LATENT_KEYS if k in self.data})
        self.save_quarantine()
        meta = {"total": self.total, "capacity": self.capacity, "chunk_size": self.chunk_size, "rng": self.rng.bit_generator.state}
        write_text_atomic(self.directory / "replay.json", json.dumps(meta))

    def save_quarantine(self) -> None:
        """Writes the step indices of the quarantined rows (``quarantine.npz``)."""
        held = self.held_steps()
        _atomic_savez(self.directory / QUARANTINE_FILE, {"steps": held[self.bad[held % self.capacity]] if len(self.bad) else held[:0]})

    def load(self) -> bool:
        """Restores the state of the last :meth:`save`; False when there is none."""
        if not self.directory or not (self.directory / "replay.json").exists():
            return False
        meta = json.loads((self.directory / "replay.json").read_text())
        if meta["chunk_size"] != self.chunk_size:
            raise ValueError(f"replay in {self.directory} uses chunk_size {meta['chunk_size']}, not {self.chunk_size}")
        total = int(meta["total"])
        first = max(0, total - self.capacity)
        parts: list[dict[str, np.ndarray]] = []
        for index in range(first // self.chunk_size, total // self.chunk_size):
            with np.load(self._chunk_path(index)) as f:
                parts.append({k: f[k] for k in f.files})
        with np.load(self.directory / "partial.npz") as f:
            parts.append({k: f[k] for k in f.files})
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Trim the first chunk to the capacity window.
        skip = first - (first // self.chunk_size) * self.chunk_size
        arrays = {k: v[skip:] for k, v in arrays.items()}
        with np.load(self.directory / "latents.npz") as f:
            arrays.update({k: f[k] for k in f.files})
        self.total = 0
        self.data = {}
        self._allocate({k: v[0] for k, v in arrays.items()})
        pos = self._positions(first, total)
        for k, v in arrays.items():
            if len(v) != len(pos):
                raise ValueError(f"replay in {self.directory} is inconsistent: {k} has {len(v)} steps, expected {len(pos)}")
            self.data[k][pos] = v
        self.total = total
        self.rng.bit_generator.state = meta["rng"]
        quarantine = self.directory / QUARANTINE_FILE
        if quarantine.exists():  # replays saved before quarantines existed have none
            with np.load(quarantine) as f:
                steps = f["steps"].astype(np.int64)
            self.bad[steps[(steps >= first) & (steps < total)] % self.capacity] = True
        return True


class DiskReplay:
    """Read-only access to the replay a run saved in ``directory``, one chunk file at a time.

    Same numbering and :meth:`read` as :class:`Replay`, without loading the
    whole replay (a pixel replay can be many GB): only the chunks a read
    touches are opened, and only the keys asked for are decompressed. Like
    :meth:`Replay.load` it shows the state of the last ``save()``.

    Raises:
        ValueError: when ``directory`` holds no saved replay.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / "replay.json"
        try:
            meta = json.loads(meta_path.read_text())
            self.total, self.capacity, self.chunk_size = int(meta["total"]), int(meta["capacity"]), int(meta["chunk_size"])
        except FileNotFoundError:
            raise ValueError(f"no saved replay in {self.directory} (replay.json is missing)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read {meta_path}: {exc}") from exc

    def __len__(self) -> int:
        return self.total - self.first

    @property
    def first(self) -> int:
        """Number of the oldest step held."""
        return max(0, self.total - self.capacity)

    def read(self, start: int, stop: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Steps ``start … stop − 1`` in order (see :meth:`Replay.read`); latents are not included.

        Raises:
            ValueError: for a range outside the held steps, or a chunk file
                that is missing or unreadable.
        """
        _check_range(start, stop, self.first, self.total, f"replay in {self.directory}")
        if stop == start:
            return {}
        parts: list[dict[str, np.ndarray]] = []
        done = self.total // self.chunk_size  # chunks below this index are complete files; the rest is partial.npz
        for index in range(start // self.chunk_size, (stop - 1) // self.chunk_size + 1):
            base = index * self.chunk_size
            path = self.directory / (f"chunk_{index:08d}.npz" if index < done else "partial.npz")
            lo, hi = max(start, base) - base, min(stop, base + self.chunk_size) - base
            try:
                with np.load(path) as f:
                    names = [k for k in (keys or f.files) if k not in LATENT_KEYS]
                    parts.append({k: f[k][lo:hi] for k in names})
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"cannot read replay file {path}: {exc}") from exc
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_range(start: int, stop: int, first: int, total: int, what: str) -> None:
    if not first <= start <= stop <= total:
        raise ValueError(f"steps {start}…{stop - 1} are not all held by the {what} (it holds steps {first}…{total - 1})")


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file, so a reader never sees half of it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
