"""Data-parallel updates over ``torch.distributed`` (launched by ``torchrun``; NCCL on GPUs, gloo on CPUs).

Each rank samples its own batch and computes its own gradients; before the
optimiser step the gradients are averaged over the ranks with one all-reduce
per dtype bucket (what DDP does, without wrapping the agent: the Dreamer update
calls many modules and takes a separate gradient for the actor), so every rank
applies the same update from the same parameters. Statistics that normalise
the update, the return percentiles, are computed from all ranks' returns
(``gather``). With identical parameters, gradients and statistics, the
optimiser moments and the slow critic stay identical on every rank without
further communication; ``broadcast_module`` makes the start identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def world_from_env() -> tuple[int, int]:
    """``(rank, world size)`` that torchrun set in the environment (``(0, 1)`` without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class DataParallel:
    """The torch.distributed collectives one Dreamer update needs.

    Args:
        group: the process group (the default group when None).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: launch with torchrun, or call init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    @classmethod
    def from_env(cls, device: torch.device) -> DataParallel | None:
        """Joins the job torchrun started (NCCL for CUDA, gloo otherwise); None when there is no job of several ranks."""
        _, world = world_from_env()
        if world <= 1:
            return None
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls()

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replaces each gradient by its mean over the ranks (one all-reduce per dtype and device)."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat /= self.world
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0 (in rank order); the same shape on every rank is required."""
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.detach().contiguous(), group=self.group)
        return torch.cat(parts, 0)

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copies rank ``src``'s parameters and buffers to every rank."""
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src, group=self.group)

    def all_agree(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank."""
        value = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self.group)
        return bool(value.item())
