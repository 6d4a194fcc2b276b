"""Checkpoints that resume exactly: agent, optimiser, counters, every RNG and which replay generation goes with them."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # for the annotations only: reading a checkpoint needs no model code
    from .dreamer import Dreamer

CHECKPOINT = "checkpoint.pt"
#: Payload key: the number of the replay generation saved with the checkpoint
#: (see :mod:`reverie.agent.replay`); None when replay was still empty.
REPLAY_GENERATION = "replay_generation"


def spaces_to_dict(obs_space: dict, act_space: Any) -> dict[str, Any]:
    """Plain description of the spaces (stored in checkpoints so export needs no simulator)."""
    describe = lambda s: {"dtype": s.dtype.name, "shape": list(s.shape), "low": s.low, "high": s.high, "discrete": s.discrete}  # noqa: E731
    return {"obs": {k: describe(v) for k, v in obs_space.items()}, "act": describe(act_space)}


def spaces_from_dict(data: dict[str, Any]) -> tuple[dict, Any]:
    """Inverse of :func:`spaces_to_dict`."""
    from reverie.envs.base import Space

    make = lambda d: Space(d["dtype"], tuple(d["shape"]), d["low"], d["high"], d["discrete"])  # noqa: E731
    return {k: make(v) for k, v in data["obs"].items()}, make(data["act"])


def rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's and torch's global generators."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # the update's noise on a GPU comes from its own generator
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(logdir: str | Path, agent: Dreamer, counters: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Writes ``logdir/checkpoint.pt`` atomically (a crash never leaves half a file)."""
    path = Path(logdir) / CHECKPOINT
    payload = {
        "format": 1,
        "agent": agent.state_dict(),
        "optimizer": agent.optimizer.state_dict(),
        "counters": dict(counters),
        "rng": rng_state(),
        **(extra or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read(path: str | Path, device: torch.device | str = "cpu", *, mmap: bool = False) -> dict[str, Any]:
    """The payload of a checkpoint file (e.g. its ``spaces``, before an agent is built to load it into).

    ``mmap``: map the tensors from the file instead of reading them (for a
    caller that needs only the small entries).

    Raises:
        ValueError: when the file cannot be read or is not a reverie checkpoint.
    """
    try:
        payload = torch.load(path, map_location=device, weights_only=False, mmap=mmap)
    except Exception as exc:  # torch raises many types for a corrupted file
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != 1:
        raise ValueError(f"{path} is not a reverie checkpoint")
    return payload


def replay_generation(payload: dict[str, Any]) -> int | None:
    """The replay generation a resume from ``payload`` must load (None: none was saved, replay was empty).

    A checkpoint from before generations names none: it was saved with the
    only replay state there was, which reads as generation
    :data:`~reverie.agent.replay.LEGACY`.
    """
    from .replay import LEGACY

    return payload.get(REPLAY_GENERATION, LEGACY)


def restore(payload: dict[str, Any], agent: Dreamer, path: str | Path) -> None:
    """Loads the agent and optimiser state of a :func:`read` payload into ``agent``.

    Raises:
        ValueError: when it does not fit the agent (another algorithm, size or environment).
    """
    try:
        agent.load_state_dict(payload["agent"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit this agent (other algo, size or env?): {exc}") from exc
    agent.optimizer.load_state_dict(payload["optimizer"])


def load(path: str | Path, agent: Dreamer) -> dict[str, Any]:
    """Loads a checkpoint into ``agent``; returns the whole payload.

    Raises:
        ValueError: when the file is not a reverie checkpoint or does not fit
            the agent (another algorithm, size or environment).
    """
    payload = read(path, agent.device)
    restore(payload, agent, path)
    return payload
