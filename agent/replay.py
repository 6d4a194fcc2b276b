"""Replay: an in-memory ring of steps, persisted to disk in chunks and generations.

Every step holds the observation, the action taken after it and the model's
latent state after observing it (``deter``, ``stoch`` as class indices). The
latents are refreshed by training (``update_latents``) and used as the start
state of sampled sequences, so a sequence need not be warmed up from zeros
(the official ``replay_context``).

Rows found invalid (values outside their meaning, see
:class:`reverie.envs.step_spec.StepSpec`) can be quarantined: no sampled
sequence contains one, until new data overwrites it.

On disk (``directory``):

- ``chunk_XXXXXXXX.npz``: ``chunk_size`` completed steps (no latents),
  written once as they fill.
- One *generation* per ``save()``, numbered 1, 2, …: ``partial-N.npz`` (the
  steps after the last complete chunk), ``latents-N.npz`` (the latents of
  every held step) and ``quarantine-N.npz`` (step indices of quarantined
  rows). A generation's files are never rewritten (except the quarantine list
  by ``reverie replay check --repair``).
- ``replay.json`` (:class:`Manifest`): the generations kept (one or two) with
  each one's step count and sampler state. Written last and atomically, it is
  the commit point: a kill at any moment leaves either the previous or the
  new commit whole, and ``load()`` reads only the files it names.

A run's checkpoint records the generation saved with it, and a resume loads
exactly that one, so the replay and the checkpoint always come from the same
update (``RunBook.save``: replay save, checkpoint save, then :meth:`Replay.prune`
forgets the previous generation). Chunk files are deleted only once neither
the in-memory window nor a kept generation's window holds their steps.

A directory written before generations existed (``partial.npz``,
``latents.npz``, ``quarantine.npz``, ``replay.json`` with ``total``) reads as
one generation, :data:`LEGACY`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

LATENT_KEYS = ("deter", "stoch")
#: The commit point of a replay directory (see :class:`Manifest`).
MANIFEST = "replay.json"


#: File parts of one generation: what changes between saves (chunks never do).
PARTS = ("partial", "latents", "quarantine")
#: The number of a replay saved before generations existed (its files are ``partial.npz`` and so on).
LEGACY = 0


@dataclasses.dataclass(frozen=True)
class Generation:
    """One committed save: its step count, its sampler state and the files of its mutable part.

    Attributes:
        number: counts saves (not steps: two saves can hold the same steps
            with other latents or quarantines).
        total: steps ever added when it was saved.
        rng: the sampling generator's state.
        files: file name in the replay directory per part of :data:`PARTS`.
    """

    number: int
    total: int
    rng: dict[str, Any]
    files: dict[str, str]

    @classmethod
    def new(cls, number: int, total: int, rng: Mapping[str, Any]) -> Generation:
        """Generation ``number``, its files named after it."""
        return cls(number, total, dict(rng), {part: f"{part}-{number}.npz" for part in PARTS})


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``replay.json``: the generations a replay directory keeps, oldest first; writing it commits a save.

    Attributes:
        capacity: the replay's capacity.
        chunk_size: steps per chunk file.
        generations: the committed generations (one or two), oldest first.
    """

    capacity: int
    chunk_size: int
    generations: list[Generation]

    @classmethod
    def read(cls, directory: str | Path) -> Manifest | None:
        """The manifest of ``directory``; None when nothing was saved there.

        A ``replay.json`` from before generations (``total`` and ``rng`` at
        the top) is one generation, :data:`LEGACY`, with the plain file names.

        Raises:
            ValueError: when the file cannot be read.
        """
        path = Path(directory) / MANIFEST
        try:
            meta = json.loads(path.read_text())
            if "generations" in meta:
                generations = [Generation(int(g["number"]), int(g["total"]), g["rng"], dict(g["files"])) for g in meta["generations"]]
            else:
                generations = [Generation(LEGACY, int(meta["total"]), meta["rng"], {part: f"{part}.npz" for part in PARTS})]
            return cls(int(meta["capacity"]), int(meta["chunk_size"]), generations)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc

    def write(self, directory: Path) -> None:
        """Replaces ``replay.json`` atomically."""
        generations = [dataclasses.asdict(g) for g in self.generations]
        write_text_atomic(
            directory / MANIFEST, json.dumps({"capacity": self.capacity, "chunk_size": self.chunk_size, "generations": generations})
        )

    @property
    def latest(self) -> Generation:
        """The newest generation."""
        return self.generations[-1]

    def find(self, number: int | None, directory: Path) -> Generation:
        """Generation ``number`` (None: the latest).

        Raises:
            ValueError: when the manifest does not name it.
        """
        if number is None:
            return self.latest
        for generation in self.generations:
            if generation.number == number:
                return generation
        kept = ", ".join(str(g.number) for g in self.generations)
        raise ValueError(f"replay in {directory} keeps generations {kept}, not generation {number}")


class Replay:
    """Uniform replay of fixed-length sequences, optionally mixed with the most recent ones.

    Args:
        capacity: steps kept; the oldest are dropped first.
        seq_len: length of sampled sequences (batch length + 1 context step).
        directory: where chunks are written; None keeps everything in memory.
        chunk_size: steps per chunk file.
        seed: seed of the sampling generator.
        write: False reads ``directory`` (``load``) but never writes it: the
            replays of data-parallel ranks other than 0, which hold the same
            steps as rank 0's.
        recent_fraction: the share of each batch whose sequences start among
            the newest ``recent_steps`` steps (the official code's
            ``replay.fracs.recency``, as a window): a policy deployed to new
            dynamics learns from them sooner than from uniform draws over a
            replay full of the simulator's steps. 0 (the default) samples
            exactly as a uniform replay.
        recent_steps: the size of that window, in steps.
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
        recent_fraction: float = 0.0,
        recent_steps: int = 0,
    ) -> None:
        if capacity < seq_len:
            raise ValueError(f"replay capacity {capacity} is smaller than the sequence length {seq_len}")
        if not 0.0 <= recent_fraction <= 1.0:
            raise ValueError(f"replay.recent_fraction must lie in [0, 1], got {recent_fraction}")
        if recent_fraction > 0 and recent_steps < seq_len:
            raise ValueError(f"replay.recent_steps ({recent_steps}) must hold at least one sequence ({seq_len} steps)")
        self.recent_fraction, self.recent_steps = float(recent_fraction), int(recent_steps)
        self.capacity, self.seq_len, self.chunk_size = int(capacity), int(seq_len), int(chunk_size)
        self.directory = Path(directory) if directory else None
        self.write = write
        self.rng = np.random.default_rng(seed)
        self.total = 0  # steps ever added
        self.data: dict[str, np.ndarray] = {}
        #: per storage position: quarantined (never part of a sampled sequence).
        self.bad = np.zeros(0, bool)
        #: the generation on disk the in-memory state was last loaded from or saved as.
        self.generation: int | None = None
        # The generation a checkpoint pairs with (loaded, or passed to prune): save() keeps it.
        self._paired: int | None = None
        # Step counts of the generations on disk this replay keeps; their windows' chunks stay.
        self._kept_totals: list[int] = []
        # Chunk files below this index are deleted already.
        self._chunks_from = 0

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

    @property
    def _disk(self) -> Path:
        """The directory, for the methods that run only when there is one."""
        if self.directory is None:
            raise ValueError("this replay has no directory: it keeps its steps in memory only")
        return self.directory

    def _chunk_path(self, index: int) -> Path:
        return self._disk / f"chunk_{index:08d}.npz"

    def _positions(self, start: int, stop: int) -> np.ndarray:
        return np.arange(start, stop) % self.capacity

    def _write_chunk(self, index: int) -> None:
        self._disk.mkdir(parents=True, exist_ok=True)
        pos = self._positions(index * self.chunk_size, (index + 1) * self.chunk_size)
        arrays = {k: v[pos] for k, v in self.data.items() if k not in LATENT_KEYS}
        _atomic_savez(self._chunk_path(index), arrays)
        self._drop_chunks()

    def _drop_chunks(self) -> None:
        """Deletes the chunk files below every window still needed: the in-memory one and each kept generation's."""
        firsts = [self.first, *(max(0, total - self.capacity) for total in self._kept_totals)]
        needed = min(firsts) // self.chunk_size
        for index in range(self._chunks_from, needed):
            self._chunk_path(index).unlink(missing_ok=True)
        self._chunks_from = max(self._chunks_from, needed)

    # ------------------------------------------------------------ sampling
    def sample(self, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Sampled sequences (none holds a quarantined row): uniform, the last ``round(recent_fraction × batch)``
        of them from the newest ``recent_steps`` steps.

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
        recent = round(self.recent_fraction * batch)
        pos = self._draw(batch - recent, first, last_start)
        if recent:  # with none, the draws are exactly those of a uniform replay
            window_start = max(first, last_start + self.seq_len - self.recent_steps)
            pos = np.concatenate([pos, self._draw(recent, window_start, last_start)])
        return {k: v[pos] for k, v in self.data.items()}, pos

    def _draw(self, count: int, low: int, last_start: int) -> np.ndarray:
        """Storage positions ``[count, L]`` of sequences starting uniformly in ``[low, last_start]``."""
        starts = self.rng.integers(low, last_start + 1, size=count)
        pos = (starts[:, None] + np.arange(self.seq_len)[None]) % self.capacity  # [B, L]
        if self.quarantined:  # with none, the draws are exactly those of a replay that never had any
            pos = self._avoid_quarantine(pos, low, last_start)
        return pos

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

    def scan(
        self, bad_rows: Callable[[dict[str, np.ndarray]], np.ndarray], keys: list[str] | None = None, block: int = 65536
    ) -> np.ndarray:
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
    def save(self) -> int | None:
        """Writes the in-memory state as a new generation and commits it; returns the generation's number.

        The generation's files are written first and ``replay.json``, which
        names them, last (atomically): a crash at any point leaves the
        previous commit whole. The generation a checkpoint pairs with (the
        one loaded, or the last one passed to :meth:`prune`) stays named
        until :meth:`prune` forgets it (so a replay that was loaded keeps
        that generation, and the chunks of its window, until it is pruned);
        any other older one is forgotten and deleted here. None when there is
        nothing to write (no directory, a read-only replay, no step yet).
        """
        if not self.directory or not self.write or not self.data:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        before = Manifest.read(self.directory)
        committed = before.generations if before else []
        # Never a number the manifest names, so no file a commit names is ever overwritten.
        number = max((g.number for g in committed), default=LEGACY) + 1
        generation = Generation.new(number, self.total, self.rng.bit_generator.state)
        done = self.total // self.chunk_size
        partial = self._positions(done * self.chunk_size, self.total)
        _atomic_savez(self._path(generation, "partial"), {k: v[partial] for k, v in self.data.items() if k not in LATENT_KEYS})
        held = self._positions(self.first, self.total)
        _atomic_savez(self._path(generation, "latents"), {k: self.data[k][held] for k in LATENT_KEYS if k in self.data})
        self._write_quarantine(generation)
        self._commit(committed, [*(g for g in committed if g.number == self._paired), generation])
        self.generation = number
        return number

    def prune(self, number: int) -> None:
        """Forgets every generation but ``number`` and deletes their files and the chunks below its window.

        Call it once a checkpoint names ``number``: from then on nothing needs
        the generations before it.
        """
        if not self.directory or not self.write:
            return
        manifest = Manifest.read(self.directory)
        if manifest is None:
            raise ValueError(f"replay in {self.directory} has no saved generation to keep")
        keep = manifest.find(number, self.directory)
        self._paired = number
        self._commit(manifest.generations, [keep])
        # Temporary files a killed writer left (only this process writes here, and it is between writes).
        for leftover in [*self.directory.glob("*.tmp"), *self.directory.glob("*.tmp.npz")]:
            leftover.unlink(missing_ok=True)

    def _commit(self, before: list[Generation], keep: list[Generation]) -> None:
        """Writes the manifest naming ``keep`` (the commit point), then deletes what no kept generation needs."""
        Manifest(self.capacity, self.chunk_size, keep).write(self._disk)
        self._kept_totals = [g.total for g in keep]
        needed = {name for g in keep for name in g.files.values()}
        for generation in before:
            for name in generation.files.values():
                if name not in needed:
                    (self._disk / name).unlink(missing_ok=True)
        self._drop_chunks()

    def _path(self, generation: Generation, part: str) -> Path:
        return self._disk / generation.files[part]

    def _write_quarantine(self, generation: Generation) -> None:
        held = self.held_steps()
        steps = held[self.bad[held % self.capacity]] if len(self.bad) else held[:0]
        _atomic_savez(self._path(generation, "quarantine"), {"steps": steps})

    def save_quarantine(self) -> None:
        """Rewrites the quarantine list (step indices) of the generation loaded or last saved, in place.

        For ``reverie replay check --repair``: one file replaced atomically,
        and a longer list only keeps more rows from being sampled.
        """
        if not self.directory or self.generation is None:
            raise ValueError("the replay was neither loaded nor saved: there is no generation to write the quarantine of")
        manifest = Manifest.read(self.directory)
        if manifest is None:
            raise ValueError(f"replay in {self.directory} has no saved generation")
        self._write_quarantine(manifest.find(self.generation, self.directory))

    def load(self, generation: int | None = None) -> bool:
        """Restores the state of a committed :meth:`save`; False when there is none.

        Args:
            generation: the generation's number (as :meth:`save` returned it;
                :data:`LEGACY` for a replay saved before generations); None:
                the latest one.

        Raises:
            ValueError: for another chunk size, a generation the manifest does
                not name, or files that do not fit it.
        """
        if not self.directory:
            return False
        manifest = Manifest.read(self.directory)
        if manifest is None:
            return False
        if manifest.chunk_size != self.chunk_size:
            raise ValueError(f"replay in {self.directory} uses chunk_size {manifest.chunk_size}, not {self.chunk_size}")
        saved = manifest.find(generation, self.directory)
        total = saved.total
        first = max(0, total - self.capacity)
        parts: list[dict[str, np.ndarray]] = []
        for index in range(first // self.chunk_size, total // self.chunk_size):
            parts.append(_read_npz(self._chunk_path(index)))
        parts.append(_read_npz(self._path(saved, "partial")))
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        # Trim the first chunk to the capacity window.
        skip = first - (first // self.chunk_size) * self.chunk_size
        arrays = {k: v[skip:] for k, v in arrays.items()}
        arrays.update(_read_npz(self._path(saved, "latents")))
        self.total = 0
        self.data = {}
        self._allocate({k: v[0] for k, v in arrays.items()})
        pos = self._positions(first, total)
        for k, v in arrays.items():
            if len(v) != len(pos):
                raise ValueError(f"replay in {self.directory} is inconsistent: {k} has {len(v)} steps, expected {len(pos)}")
            self.data[k][pos] = v
        self.total = total
        self.rng.bit_generator.state = saved.rng
        quarantine = self._path(saved, "quarantine")
        if quarantine.exists():  # replays saved before quarantines existed have none
            steps = _read_npz(quarantine, ("steps",))["steps"].astype(np.int64)
            self.bad[steps[(steps >= first) & (steps < total)] % self.capacity] = True
        self.generation = self._paired = saved.number
        self._kept_totals = [g.total for g in manifest.generations]
        self._chunks_from = 0
        return True


class DiskReplay:
    """Read-only access to the replay a run saved in ``directory``, one chunk file at a time.

    Same numbering and :meth:`read` as :class:`Replay`, without loading the
    whole replay (a pixel replay can be many GB): only the chunks a read
    touches are opened, and only the keys asked for are decompressed. Like
    :meth:`Replay.load` it shows the state of a committed save: ``generation``
    (None: the latest).

    Raises:
        ValueError: when ``directory`` holds no saved replay, or not that generation.
    """

    def __init__(self, directory: str | Path, generation: int | None = None) -> None:
        self.directory = Path(directory)
        manifest = Manifest.read(self.directory)
        if manifest is None:
            raise ValueError(f"no saved replay in {self.directory} ({MANIFEST} is missing)")
        saved = manifest.find(generation, self.directory)
        self.total, self.capacity, self.chunk_size = saved.total, manifest.capacity, manifest.chunk_size
        self._partial = self.directory / saved.files["partial"]

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
        done = self.total // self.chunk_size  # chunks below this index are complete files; the rest is the partial file
        for index in range(start // self.chunk_size, (stop - 1) // self.chunk_size + 1):
            base = index * self.chunk_size
            path = self.directory / f"chunk_{index:08d}.npz" if index < done else self._partial
            lo, hi = max(start, base) - base, min(stop, base + self.chunk_size) - base
            parts.append({k: v[lo:hi] for k, v in _read_npz(path, keys, skip=LATENT_KEYS).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _read_npz(path: Path, keys: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The arrays of one replay file (``keys``, default all, less ``skip``).

    Raises:
        ValueError: naming the file, when it is missing, truncated or not an
            ``.npz`` of these keys (a disk fault or a hand edit, never a kill:
            every file is written atomically).
    """
    try:
        with np.load(path) as f:
            return {k: f[k] for k in (keys or f.files) if k not in skip}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read replay file {path}: {exc}") from exc


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
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stub + mypy: **arrays is checked against savez's allow_pickle: bool
    os.replace(tmp, path)
