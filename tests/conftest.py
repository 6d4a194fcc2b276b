"""Shared fixtures: a tiny, fast agent configuration for end-to-end runs."""

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

# A model small enough that a few hundred steps train in seconds on 2 cores.
TINY = [
    "size.deter=32",
    "size.hidden=16",
    "size.classes=4",
    "size.units=16",
    "size.depth=2",
    "algo.rssm.stoch=4",
    "algo.rssm.blocks=4",
    "algo.imag_horizon=5",
    "batch_size=4",
    "batch_length=8",
    "train_start=16",
    "train_ratio=32",
    "progress=false",
    "log_every=20",
    "eval_episodes=1",
    "threads=1",
    "compile=false",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides for a tiny run that writes into a temporary logdir."""
    return [*TINY, f"logdir={tmp_path / 'run'}"]


def make_agent(env, overrides=("size=1m",)):
    """A freshly initialised (seeded, untrained) agent for ``env``: enough for export and timing tests."""
    import torch

    from reverie.agent.builder import build_agent
    from reverie.cli.config import compose

    torch.manual_seed(0)
    return build_agent(compose(list(overrides)), env.obs_space, env.act_space).eval()
