"""The train ratio: how many updates the collected data pays for (the one place that reads ``train_ratio``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig


class TrainRatio:
    """Updates owed for the agent steps collected so far.

    ``train_ratio`` is replayed steps per agent step. One update replays
    ``world × batch_size × batch_length`` steps (under data parallel each of
    the ``world`` ranks trains on its own batch), so every agent step earns
    ``train_ratio / (world · batch_size · batch_length)`` updates, from the
    moment replay holds ``train_start`` steps (and one whole sequence). At
    that moment ``algo.pretrain`` updates are owed at once besides (DreamerV1's
    and V2's DMC burst of 100 on the prefill data; 0 for V3). The credit lives
    in ``counters["train_credit"]``, so it is checkpointed with the run.

    Args:
        cfg: the composed config.
        counters: the run's counters (see :class:`~reverie.agent.run.RunBook`).
        world: data-parallel ranks.
    """

    def __init__(self, cfg: DictConfig, counters: dict[str, Any], world: int = 1) -> None:
        self.counters = counters
        self.replayed_per_update = int(world) * int(cfg.batch_size) * int(cfg.batch_length)
        self.per_step = float(cfg.train_ratio) / self.replayed_per_update
        self.start = max(int(cfg.train_start), int(cfg.batch_length) + 1)
        self.pretrain = int(cfg.algo.pretrain)
        if self.pretrain < 0:
            raise ValueError(f"algo.pretrain must be >= 0 updates, got {self.pretrain}")

    def ready(self, replay_steps: int) -> bool:
        """Enough steps in replay to start training."""
        return replay_steps >= self.start

    def earn(self, agent_steps: int, replay_steps: int) -> None:
        """Adds the updates ``agent_steps`` new steps pay for (nothing before replay is ready)."""
        if not self.ready(replay_steps):
            return
        if self.counters["updates"] == 0 and self.counters["train_credit"] == 0:
            # Training starts now (nothing made, nothing owed yet; a resumed run that trained has updates).
            self.counters["train_credit"] += self.pretrain
        self.counters["train_credit"] += agent_steps * self.per_step

    def owed(self) -> bool:
        """At least one update is owed."""
        return self.counters["train_credit"] >= 1.0

    def spend(self) -> None:
        """One update was made."""
        self.counters["train_credit"] -= 1.0

    def achieved(self) -> float:
        """Replayed steps per agent step so far (every rank's batches)."""
        return self.counters["updates"] * self.replayed_per_update / max(1, self.counters["agent_steps"])
