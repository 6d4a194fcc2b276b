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

The loops (``reverie train``, ``reverie learner``) also exchange small Python
objects: rank 0's collected steps or received experience, the replay latents
each rank refreshed, each rank's generator states for a checkpoint. Those go
over a gloo group on the CPU (``broadcast_object``, ``all_gather_object``,
``gather_object``), also when the gradients go over NCCL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world_from_env() -> tuple[int, int]:
    """``(rank, world size)`` that torchrun set in the environment (``(0, 1)`` without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _join(world: int, backend: str) -> None:
    """``init_process_group`` for a torchrun worker, safe across torchrun's restarts.

    torchrun's agent keeps one store for the whole job; after a restart
    (``--max-restarts``) the keys of the attempt before (a dead rank's address)
    are still in it, and a new rank that read one of them before its peer
    wrote the new one would connect to nobody. Each attempt's keys therefore
    get their own prefix.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend)
        return
    rank = int(os.environ["RANK"])
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    store = dist.PrefixStore(f"reverie/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world)


class DataParallel:
    """The torch.distributed collectives one Dreamer update needs.

    Args:
        group: the process group (the default group when None).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, object_group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: launch with torchrun, or call init_process_group first")
        self.group = group
        #: the group for Python objects: gloo (CPU); the default group when that is gloo already.
        self.object_group = object_group if object_group is not None else group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)

    @classmethod
    def from_env(cls, device: torch.device) -> DataParallel | None:
        """Joins the job torchrun started (NCCL for CUDA, gloo otherwise); None when there is no job of several ranks."""
        _, world = world_from_env()
        if world <= 1:
            return None
        if not dist.is_initialized():
            _join(world, "nccl" if device.type == "cuda" else "gloo")
        objects = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(object_group=objects)

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

    def close(self) -> None:
        """Leaves the job (the process group is destroyed; idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; the others pass anything, e.g. None)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src, group=self.object_group)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.object_group)
        return out

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank ``dst``; None on the others."""
        out: list[Any] | None = [None] * self.world if self.rank == dst else None
        dist.gather_object(obj, out, dst=dst, group=self.object_group)
        return out


class RankLost(RuntimeError):
    """A collective failed because another rank of the job is gone."""


def collective_failed(exc: BaseException) -> bool:
    """The error of a collective whose peer is gone (gloo: connection closed or reset; NCCL: a DistBackendError)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in ("gloo", "connection closed", "connection reset", "broken pipe"))


def lost_rank_message(exc: BaseException) -> str:
    """One line for a collective that failed because another rank is gone (it died, or torchrun stopped it)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"another rank of this data-parallel job stopped answering ({type(exc).__name__}: {first[:300]}); the job ends here."
        " The last checkpoint is intact: rerun the same command (torchrun …) to resume from it"
    )
