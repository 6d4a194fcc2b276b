"""Builds the agent and its environment from a composed config (the one place that reads config sections)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from reverie import envs
from reverie.envs.base import Space, model_keys

from .dreamer import Dreamer


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def make_env(cfg: DictConfig, seed: int) -> envs.Env:
    """The environment of ``cfg`` (name, observations, action repeat, time limit, image size)."""
    e = cfg.env
    return envs.make(e.name, obs=cfg.obs, seed=seed, action_repeat=e.action_repeat, time_limit=e.time_limit, size=(e.size, e.size))


def build_agent(cfg: DictConfig, obs_space: dict[str, Space], act_space: Space) -> Dreamer:
    """A :class:`Dreamer` for these spaces with the ``algo`` and ``size`` settings of ``cfg``."""
    algo, size = _plain(cfg.algo), _plain(cfg.size)
    if algo["name"] != "dreamerv3":
        raise ValueError(f"algo {algo['name']!r} is not available; valid: dreamerv3")
    units, depth = size["units"], size["depth"]
    head = lambda h: {k: v for k, v in h.items() if k != "bins"}  # noqa: E731
    world_model = dict(
        rssm=dict(algo["rssm"], deter=size["deter"], hidden=size["hidden"], classes=size["classes"]),
        encoder=dict(algo["encoder"], units=units, depth=depth, mults=tuple(algo["encoder"]["mults"])),
        decoder=dict(algo["decoder"], units=units, depth=depth, mults=tuple(algo["decoder"]["mults"])),
        reward_head=dict(algo["reward_head"], units=units),
        cont_head=dict(head(algo["cont_head"]), units=units),
        free_nats=algo["free_nats"],
    )
    return Dreamer(
        obs_space=obs_space,
        act_space=act_space,
        obs_keys=model_keys(obs_space),
        world_model=world_model,
        actor=dict(algo["actor"], units=units),
        critic=dict(algo["critic"], units=units),
        imag_horizon=algo["imag_horizon"],
        lam=algo["lam"],
        horizon=algo["horizon"],
        entropy_scale=algo["entropy_scale"],
        slowreg=algo["slowreg"],
        slow_rate=algo["slow_rate"],
        retnorm=algo["retnorm"],
        loss_scales=algo["loss_scales"],
        optimizer=algo["optimizer"],
        replay_value=algo["replay_value"],
    )
