"""Loads a trained agent from a run's logdir or checkpoint file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reverie import envs

from . import checkpoint
from .builder import build_agent
from .dreamer import Dreamer


def load_trained(path: str | Path, *, device: str = "cpu") -> tuple[Dreamer, DictConfig, dict[str, Any], Any]:
    """The agent of a checkpoint, its config and its spaces.

    Args:
        path: a logdir (holding ``checkpoint.pt`` and ``config.yaml``) or the
            checkpoint file itself (``config.yaml`` beside it).

    Raises:
        ValueError: for a missing or unreadable checkpoint or config, or a
            checkpoint that does not fit its config.
    """
    path = Path(path)
    ckpt = path / checkpoint.CHECKPOINT if path.is_dir() else path
    config = ckpt.parent / "config.yaml"
    if not ckpt.exists():
        raise ValueError(f"no checkpoint at {ckpt}")
    if not config.exists():
        raise ValueError(f"no config.yaml beside {ckpt}")
    import torch

    try:
        cfg = OmegaConf.load(config)
    except Exception as exc:  # unreadable YAML
        raise ValueError(f"cannot read {config}: {exc}") from exc
    if not isinstance(cfg, DictConfig):  # valid YAML, but a list
        raise ValueError(f"cannot read {config}: it holds a {type(cfg).__name__}, not a mapping of config keys")
    try:
        payload = torch.load(ckpt, map_location=device, weights_only=False)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {ckpt}: {exc}") from exc
    if isinstance(payload, dict) and "spaces" in payload:
        obs_space, act_space = checkpoint.spaces_from_dict(payload["spaces"])
    else:  # older checkpoints: ask the environment
        env = envs.from_config(cfg, seed=0)
        obs_space, act_space = env.obs_space, env.act_space
        env.close()
    agent = build_agent(cfg, obs_space, act_space).to(device)
    checkpoint.load(ckpt, agent)
    agent.eval()
    return agent, cfg, obs_space, act_space
