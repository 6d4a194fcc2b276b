"""Builds the agent from a composed config (the one place that reads its sections; the environment: ``envs.from_config``)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from reverie.envs.base import Space, model_keys
from reverie.envs.step_spec import StepSpec

from .dreamer import Dreamer


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def step_spec(cfg: DictConfig, obs_space: dict[str, Space], act_space: Space) -> StepSpec:
    """What the values of one replay step of ``cfg``'s model and environment mean (for validation)."""
    categorical = cfg.algo.rssm.get("latent", "categorical") == "categorical"
    return StepSpec.build(
        obs_space,
        act_space,
        deter=cfg.size.deter,
        stoch=cfg.algo.rssm.stoch,
        classes=cfg.size.classes if categorical else 1,
        magnitude=cfg.replay.max_magnitude,
    )


ALGOS = ("dreamerv1", "dreamerv2", "dreamerv3")
#: Optimiser options each kind takes.
_OPTIMIZER_KEYS = {"laprop": ("lr", "beta1", "beta2", "eps", "agc", "warmup"), "adam": ("lr", "actor_lr", "critic_lr", "eps", "clip", "wd")}


def build_agent(cfg: DictConfig, obs_space: dict[str, Space], act_space: Space) -> Dreamer:
    """A :class:`Dreamer` for these spaces with the ``algo`` and ``size`` settings of ``cfg``."""
    algo, size = _plain(cfg.algo), _plain(cfg.size)
    if algo["name"] not in ALGOS:
        raise ValueError(f"algo {algo['name']!r} is not available; valid: {', '.join(ALGOS)}")
    units, depth = size["units"], size["depth"]
    head = lambda h: {k: v for k, v in h.items() if k not in ("bins", "dist")}  # noqa: E731
    net = lambda n: {k: v for k, v in n.items() if k != "symlog"}  # noqa: E731
    optimizer = algo["optimizer"]
    if optimizer["kind"] not in _OPTIMIZER_KEYS:
        raise ValueError(f"unknown algo.optimizer.kind {optimizer['kind']!r}; valid: {', '.join(_OPTIMIZER_KEYS)}")
    optimizer = {"kind": optimizer["kind"], **{k: optimizer[k] for k in _OPTIMIZER_KEYS[optimizer["kind"]]}}
    retnorm = {k: v for k, v in algo["retnorm"].items() if k != "kind"}
    world_model = dict(
        rssm=dict(algo["rssm"], deter=size["deter"], hidden=size["hidden"], classes=size["classes"]),
        encoder=dict(
            net(algo["encoder"]), units=units, depth=depth, mults=tuple(algo["encoder"]["mults"]), symlog_inputs=algo["encoder"]["symlog"]
        ),
        decoder=dict(
            net(algo["decoder"]), units=units, depth=depth, mults=tuple(algo["decoder"]["mults"]), symlog_targets=algo["decoder"]["symlog"]
        ),
        reward_head=dict(algo["reward_head"], units=units),
        cont_head=dict(head(algo["cont_head"]), units=units),
        free_nats=algo["free_nats"],
        kl_mode=algo["kl_mode"],
        free_avg=algo["free_avg"],
        use_cont=algo["use_cont"],
        reward_transform=algo["reward_transform"],
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
        slow_every=algo["slow_every"],
        return_value=algo["return_value"],
        retnorm=retnorm,
        return_norm=algo["retnorm"]["kind"],
        loss_scales=algo["loss_scales"],
        optimizer=optimizer,
        replay_value=algo["replay_value"],
        actor_grad_mix=algo["actor_grad_mix"],
        discount_weight=algo["discount_weight"],
        replay_context=algo["replay_context"],
        expl_noise=algo["expl_noise"],
    )
