"""The agent, its replay and one update, as ``reverie train`` and ``reverie learner`` both use them.

One update: sample a batch whose every value is valid (a bad one is dropped,
counted and its rows quarantined), train on it under the run's precision, and
write the refreshed latents back into replay.

Under data parallel every rank holds the same replay (rank 0 feeds all of
them the same steps) and samples its own batch from it with its own
generator. After each update the ranks exchange what they changed in replay
(refreshed latents, newly quarantined rows) and apply all of it in rank
order, so the replays stay identical on every rank, and equal to the replay
of one process that trained on all ranks' sequences at once.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from reverie.envs.base import Space

from .builder import build_agent, step_spec
from .dreamer import Dreamer
from .replay import Replay
from .run import rank_seed, resolve_precision


class Updater:
    """Owns the agent and the replay of a run and makes its updates.

    Args:
        cfg: the composed config.
        obs_space: the observation spaces.
        act_space: the action space.
        device: where the agent lives.
        counters: the run's counters (``updates`` and ``dropped_batches`` are counted here).
        parallel: the data-parallel job (None: one process).
    """

    def __init__(
        self,
        cfg: DictConfig,
        obs_space: dict[str, Space],
        act_space: Space,
        *,
        device: torch.device,
        counters: dict[str, Any],
        parallel: Any = None,
    ) -> None:
        self.cfg, self.counters, self.parallel, self.device = cfg, counters, parallel, device
        rank = parallel.rank if parallel is not None else 0
        self.agent: Dreamer = build_agent(cfg, obs_space, act_space).to(device)
        self.agent.parallel = parallel
        self.spec = step_spec(cfg, obs_space, act_space)
        self.replay = Replay(
            capacity=cfg.replay.capacity,
            seq_len=cfg.batch_length + 1,
            directory=Path(cfg.logdir) / "replay",
            chunk_size=cfg.replay.chunk_size,
            seed=rank_seed(cfg.seed, rank),
            write=rank == 0,
            recent_fraction=cfg.replay.recent_fraction,
            recent_steps=cfg.replay.recent_steps,
        )
        self.precision = resolve_precision(cfg.precision, device)
        self._quarantined: list[np.ndarray] = []

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast of the matrix products under ``precision=bf16`` (``auto`` on a GPU); nothing otherwise."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def share_start(self) -> None:
        """Makes every rank start from rank 0's parameters and buffers (a no-op for one process)."""
        if self.parallel is not None:
            self.parallel.broadcast_module(self.agent)

    def repair_replay(self) -> int:
        """Quarantines the replay rows that fail validation by meaning (say so once); returns how many were new."""
        steps = self.replay.scan(self.spec.bad_rows, keys=self.spec.checked_keys)
        new = self.replay.quarantine(steps % self.replay.capacity) if len(steps) else 0
        if new and (self.parallel is None or self.parallel.rank == 0):
            print(
                f"reverie: {new} replay rows in {self.replay.directory} fail validation (see `reverie replay check`);"
                " they are quarantined and never sampled",
                file=sys.stderr,
            )
        return new

    def sample_batch(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A replayed batch whose every value is valid.

        A batch that would fail inside the update (a class index out of range,
        a non-finite value, …) is dropped and counted (``dropped_batches``),
        its bad rows quarantined so they are never sampled again, and another
        is drawn; each redraw has fewer bad rows left to hit.
        """
        while True:
            batch, pos = self.replay.sample(self.cfg.batch_size)
            bad = self.spec.bad_rows(batch, lead=2)
            if not bad.any():
                return batch, pos
            self.replay.quarantine(pos[bad])
            self._quarantined.append(pos[bad])
            self.counters["dropped_batches"] += 1

    def update(self) -> dict[str, float]:
        """One update on a sampled batch (under data parallel: on every rank's batch at once); returns its metrics."""
        dropped = self.counters["dropped_batches"]
        batch, pos = self.sample_batch()
        with self.autocast():
            metrics, latents = self.agent.train_step(batch)
        if self.parallel is None:
            self.replay.update_latents(pos[:, 1:], latents)
        else:
            self._share_replay_changes(pos[:, 1:], latents, self.counters["dropped_batches"] - dropped)
        self._quarantined = []
        self.counters["updates"] += 1
        return metrics

    def _share_replay_changes(self, pos: np.ndarray, latents: dict[str, np.ndarray], dropped: int) -> None:
        quarantined = np.concatenate(self._quarantined) if self._quarantined else np.zeros(0, np.int64)
        changes = self.parallel.all_gather_object((pos, latents, quarantined, dropped))
        self.counters["dropped_batches"] -= dropped  # counted again below, with every rank's drops
        for rank, (where, values, bad, drops) in enumerate(changes):
            if rank != self.parallel.rank and len(bad):
                self.replay.quarantine(bad)
            self.replay.update_latents(where, values)
            self.counters["dropped_batches"] += drops
