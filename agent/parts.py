"""A run assembled from its parts, in the one order both ``reverie train`` and ``reverie learner`` need.

The order matters and is easy to get wrong twice: the data-parallel job and
the run's book first (which rank writes), then the spaces (read on the
writing rank only and sent to the others), the agent and replay built under
the run's seed (the same parameters on every rank before the broadcast), each
rank's own seed for its batches and noise, the checkpoint resumed, rank 0's
parameters shared, and only then the config written and the agent compiled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from .allocator import reuse_freed_memory_when
from .distributed import DataParallel, world_from_env
from .ratio import TrainRatio
from .run import RunBook, rank_seed, resolve_device, save_config, seed_everything
from .updater import Updater


@dataclasses.dataclass
class RunParts:
    """What one rank of a run is made of.

    Attributes:
        device: where the agent lives.
        parallel: the data-parallel job torchrun started (None: one process).
        book: counters, checkpoints, the metrics window.
        updater: the agent, its replay and the update.
        ratio: the train-ratio limiter.
        obs_space: the observation spaces of the model.
        act_space: its action space.
    """

    device: torch.device
    parallel: DataParallel | None
    book: RunBook
    updater: Updater
    ratio: TrainRatio
    obs_space: dict[str, Any]
    act_space: Any


class RunAccess:
    """What ``Trainer`` and ``Learner`` share: one rank's parts of a run, and reads of its state through them."""

    book: RunBook
    updater: Updater
    ratio: TrainRatio

    def _adopt(self, parts: RunParts) -> None:
        """Keeps the assembled parts as attributes."""
        self.device, self.parallel, self.book = parts.device, parts.parallel, parts.book
        self.updater, self.ratio = parts.updater, parts.ratio
        self.obs_space, self.act_space = parts.obs_space, parts.act_space
        self.writer, self.logdir, self.repeat = self.book.writer, self.book.logdir, self.book.repeat

    def update(self) -> dict[str, float]:
        """One update on a sampled batch (spends one unit of train credit); returns its metrics."""
        self.ratio.spend()
        return self.updater.update()

    @property
    def counters(self) -> dict[str, Any]:
        """The run's counters (checkpointed)."""
        return self.book.counters

    @property
    def resumed(self) -> bool:
        """The run continued a checkpoint."""
        return self.book.resumed

    @property
    def agent(self) -> Any:
        """The agent being trained."""
        return self.updater.agent

    @property
    def replay(self) -> Any:
        """The replay (identical on every rank)."""
        return self.updater.replay

    @property
    def spec(self) -> Any:
        """What the values of a replay step mean (the learner's receiver checks every message against it)."""
        return self.updater.spec

    @property
    def env_steps(self) -> int:
        """Simulator steps so far, collected or received (agent steps × action repeat)."""
        return self.book.env_steps

    def wall_s(self) -> float:
        """Training wall clock, summed over resumed runs."""
        return self.book.wall_s()

    def sample_batch(self) -> Any:
        """A replayed batch whose every value is valid (see :meth:`Updater.sample_batch`)."""
        return self.updater.sample_batch()


def assemble_run(
    cfg: DictConfig, spaces: Callable[[RunBook], tuple[dict[str, Any], Any]], *, counters: dict[str, Any] | None = None
) -> RunParts:
    """Builds (or resumes) the run ``cfg`` describes.

    Args:
        cfg: the composed config.
        spaces: called on the writing rank only, with the run's book: the
            observation and action spaces (the trainer builds its environments
            there, the learner reads them without one).
        counters: extra counters of the caller, with their initial values.
    """
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    reuse_freed_memory_when(bool(cfg.reuse_freed_memory), device.type)  # before the first update allocates
    parallel = DataParallel.from_env(device) if world_from_env()[1] > 1 else None
    book = RunBook(cfg, parallel=parallel, counters=counters)
    seed_everything(cfg.seed)
    found = spaces(book) if book.writer else None
    if parallel is not None:
        found = parallel.broadcast_object(found)
    assert found is not None  # the writing rank found the spaces; the others received them
    obs_space, act_space = found
    updater = Updater(cfg, obs_space, act_space, device=device, counters=book.counters, parallel=parallel)
    ratio = TrainRatio(cfg, book.counters, world=book.world)
    if book.rank:  # each rank draws its own batches and noise; the parameters come from rank 0
        seed_everything(rank_seed(cfg.seed, book.rank))
    if book.resume(updater.agent, updater.replay):
        updater.repair_replay()
    updater.share_start()
    if book.writer:
        save_config(book.logdir, cfg)
    if cfg.compile:
        updater.agent.compile()
    return RunParts(device, parallel, book, updater, ratio, obs_space, act_space)
