"""Run bookkeeping that ``reverie train`` and ``reverie learner`` share.

A run is a logdir: its config (a resumed run must have the same one, up to
:data:`RESUMABLE_KEYS`), its counters, its checkpoint and its metrics. Both
loops compose a :class:`RunBook` for that (and a
:class:`~reverie.agent.ratio.TrainRatio` and an
:class:`~reverie.agent.updater.Updater`) instead of one inheriting the other.

Under data parallel (``torchrun``) every rank keeps the same counters; rank 0
alone writes (config, checkpoint, metrics), and a checkpoint carries every
rank's generator states, so a resumed job draws what an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint

if TYPE_CHECKING:  # annotations only: the book itself builds neither
    from .dreamer import Dreamer
    from .replay import Replay

#: Keys whose change does not alter a run, so a resumed run may differ in them
#: (``realtime``: transport and actor settings, outside the learner's maths;
#: ``logdir``: a run copied or moved elsewhere is the same run; ``env.spaces``:
#: a resumed run takes its spaces from its checkpoint). A dotted entry names
#: one key of a section.
RESUMABLE_KEYS = {
    "logdir",
    "steps",
    "progress",
    "log_every",
    "eval_every",
    "eval_episodes",
    "report_every",
    "report_context",
    "report_horizon",
    "report_sequences",
    "checkpoint_every",
    "device",
    # With device: precision=auto follows the device (a GPU run resumed on a CPU computes in fp32), and a
    # run started with an explicit fp32 resumes under the auto default.
    "precision",
    "threads",
    "compile",
    "realtime",
    "env.spaces",
    # The sampling mix, not the data: a run deployed to a robot resumes with more weight on what is new.
    "replay.recent_fraction",
    "replay.recent_steps",
}

#: The counters every run keeps (the learner adds its own); all are checkpointed.
COUNTERS: dict[str, Any] = {
    "agent_steps": 0,
    "updates": 0,
    "episodes": 0,
    "eval_episodes": 0,
    "train_credit": 0.0,
    "last_eval": 0,
    "last_ckpt": 0,
    "last_report": 0,
    "last_log": 0,
    "wall_s": 0.0,
    "dropped_batches": 0,
}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; under torchrun each rank takes the GPU of its ``LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device; use device=auto or device=cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    if name == "cuda":
        index = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16``; ``auto`` is bf16 autocast on a GPU and fp32 on the CPU."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {name!r}; valid: fp32, bf16, auto")
    return name


def seed_everything(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own draws (its batches and its update noise); rank 0 keeps ``seed``."""
    return int(seed) + 1_000_003 * int(rank)


def action_repeat(cfg: DictConfig) -> int:
    """Simulator steps per agent step of ``cfg``'s environment (without building it)."""
    from reverie import envs

    family = cfg.env.name.split("/", 1)[0]
    return int(cfg.env.action_repeat or envs.DEFAULT_REPEAT.get(family, 1))


def check_config(logdir: Path, cfg: DictConfig) -> None:
    """Refuses a logdir whose earlier run had another config (see :data:`RESUMABLE_KEYS`)."""
    path = logdir / "config.yaml"
    if not path.exists():
        return
    current = OmegaConf.to_container(cfg, resolve=True)
    # Options added since that run was started take their defaults, which
    # reproduce the behaviour it had.
    from reverie.configs.schema import Config

    try:
        before = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)), resolve=True)
    except Exception as exc:  # unreadable YAML, or keys the schema refuses
        raise ValueError(f"cannot read {path} of the earlier run in this logdir: {exc}") from exc
    diff = sorted(k for k in _diff(before, current) if k not in RESUMABLE_KEYS and k.split(".")[0] not in RESUMABLE_KEYS)
    if diff:
        raise ValueError(
            f"logdir {logdir} holds a run with another config (differs in: {', '.join(diff)}); "
            "use another logdir=… or the same settings to resume"
        )


def save_config(logdir: Path, cfg: DictConfig) -> None:
    """Writes ``config.yaml`` (once the run could be built, so a failed start leaves no config behind)."""
    logdir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, logdir / "config.yaml", resolve=True)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else {f"{prefix}{k}"}
        return out
    return set() if a == b else {prefix.rstrip(".")}


def window_summary(window: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the updates of a logging window (empty for none)."""
    return {k: float(np.mean([m[k] for m in window])) for k in window[0]} if window else {}


class MetricsWindow:
    """The update metrics between two metric lines, and the update rate over them.

    Args:
        updates: the update counter when the window opens.
    """

    def __init__(self, updates: int) -> None:
        self.items: list[dict[str, float]] = []
        self.opened, self.updates = time.time(), updates

    def add(self, metrics: dict[str, float]) -> None:
        """One update's metrics."""
        self.items.append(metrics)

    def __len__(self) -> int:
        return len(self.items)

    def close(self, updates: int) -> tuple[dict[str, float], float]:
        """The means, ``train/updates_per_s`` and ``train/updates``, and the window's seconds; opens the next window."""
        now = time.time()
        seconds = max(now - self.opened, 1e-9)
        summary = window_summary(self.items)
        summary["train/updates_per_s"] = (updates - self.updates) / seconds
        summary["train/updates"] = updates
        self.items, self.opened, self.updates = [], now, updates
        return summary, seconds


class RunBook:
    """A run's config guard, counters, wall clock and checkpoint (save and resume).

    Reads the checkpoint in ``logdir`` at once, if there is one, so that a
    loop can take the spaces from it before it builds the agent
    (:meth:`spaces`); :meth:`resume` then loads it into the agent and replay.

    Args:
        cfg: the composed config.
        parallel: the data-parallel job (None: one process).
        counters: the loop's own counters and their start values, besides :data:`COUNTERS`.
    """

    def __init__(self, cfg: DictConfig, *, parallel: Any = None, counters: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.logdir = Path(cfg.logdir)
        check_config(self.logdir, cfg)
        self.parallel = parallel
        self.rank = parallel.rank if parallel is not None else 0
        self.world = parallel.world if parallel is not None else 1
        #: rank 0 alone writes the run's files.
        self.writer = self.rank == 0
        self.counters: dict[str, Any] = {**COUNTERS, **(counters or {})}
        self.repeat = action_repeat(cfg)
        self.resumed = False
        self.payload = checkpoint.read(self.path) if self.path.exists() else None
        self._start, self._base = time.time(), 0.0

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.logdir / checkpoint.CHECKPOINT

    @property
    def env_steps(self) -> int:
        """Simulator steps so far (agent steps × action repeat)."""
        return self.counters["agent_steps"] * self.repeat

    def wall_s(self) -> float:
        """Training wall clock, summed over resumed runs."""
        return self._base + time.time() - self._start

    def start_clock(self) -> None:
        """Starts (or restarts) the wall clock from the checkpointed total."""
        self._start, self._base = time.time(), self.counters["wall_s"]

    def spaces(self) -> tuple[dict, Any] | None:
        """The spaces the checkpoint recorded (None without a checkpoint, or one from before spaces were stored)."""
        if self.payload is None or "spaces" not in self.payload:
            return None
        return checkpoint.spaces_from_dict(self.payload["spaces"])

    def resume(self, agent: Dreamer, replay: Replay) -> bool:
        """Continues the checkpoint read at start: agent, optimiser, counters, generators and replay; False without one."""
        if self.payload is None:
            return False
        payload, self.payload = self.payload, None  # no second copy of the weights kept around
        checkpoint.restore(payload, agent, self.path)
        self.counters.update(payload["counters"])
        generation = checkpoint.replay_generation(payload)
        # Exactly the replay generation saved with this checkpoint: a newer one (a crash between the two saves) is not
        # this checkpoint's update.
        if generation is not None and not replay.load(generation):
            raise ValueError(f"{self.path} exists but its replay in {self.logdir / 'replay'} is missing")
        ranks = payload.get("ranks") or []
        if self.rank == 0:  # rank 0's sampler state is the replay generation's, as in a run of one process
            checkpoint.set_rng_state(payload["rng"])
        elif self.rank < len(ranks):
            checkpoint.set_rng_state(ranks[self.rank]["rng"])
            replay.rng.bit_generator.state = ranks[self.rank]["replay_rng"]
        else:  # a rank the checkpointed job did not have: its own fresh streams
            seed = rank_seed(self.cfg.seed, self.rank) + int(self.counters["updates"])
            seed_everything(seed)
            replay.rng = np.random.default_rng(seed)
        self.start_clock()
        self.resumed = True
        return True

    def save(self, agent: Dreamer, replay: Replay, extra: dict[str, Any] | None = None) -> None:
        """Checkpoint and replay of this update.

        The replay is saved as a new generation first, the checkpoint (naming
        it) second, and only then is the previous generation deleted (see
        :mod:`reverie.agent.replay`).

        Under data parallel every rank calls it at the same update: it gathers
        each rank's generator states first (a collective), then rank 0 writes.
        A rank that is gone makes the gather fail before anything is written,
        so the previous checkpoint stays whole.
        """
        self.counters["last_ckpt"] = self.env_steps
        self.counters["wall_s"] = self.wall_s()
        ranks = None
        if self.parallel is not None:
            ranks = self.parallel.gather_object({"rng": checkpoint.rng_state(), "replay_rng": replay.rng.bit_generator.state})
        if not self.writer:
            return
        # Replay, then the checkpoint naming its generation, then forget the previous generation: a kill at any
        # point leaves a checkpoint and the replay generation it names, so a resume is exact.
        generation = replay.save()
        extra = {**(extra or {}), checkpoint.REPLAY_GENERATION: generation, **({"ranks": ranks} if ranks else {})}
        checkpoint.save(self.logdir, agent, self.counters, extra)
        if generation is not None:
            replay.prune(generation)
