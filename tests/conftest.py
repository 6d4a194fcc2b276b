"""Shared fixtures: a tiny, fast agent configuration for end-to-end runs."""

import importlib.util
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

#: Committed tiny exported policies for the robot-side tests (tests/make_robot_models.py writes them).
ROBOT_MODELS = Path(__file__).parent / "robot_models"
#: False in the robot-only install (`make test-robot`).
HAS_TORCH = importlib.util.find_spec("torch") is not None


def copy_robot_model(name, target):
    """Copies the committed model ``name`` (its file(s) and sidecar) to the ONNX path ``target``; returns ``target``."""
    import shutil

    target = Path(target)
    shutil.copy(ROBOT_MODELS / f"{name}.onnx", target)
    shutil.copy(ROBOT_MODELS / f"{name}.onnx.json", f"{target}.json")
    advance = ROBOT_MODELS / f"{name}.advance.onnx"
    if advance.exists():
        shutil.copy(advance, target.with_name(f"{target.stem}.advance.onnx"))
    return target


def pytest_ignore_collect(collection_path, config):
    """Without torch (the robot-only install), collects only the test modules marked ``robot``.

    The others import torch, the agent or a simulator at the top; a module
    joins the robot-side run by carrying ``pytestmark = pytest.mark.robot``.
    """
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return "pytestmark = pytest.mark.robot" not in collection_path.read_text()


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


def vector_obs_space():
    """Spaces of a small vector task: ``position (5,)`` plus the basic keys."""
    import numpy as np

    from reverie.envs.base import Space

    return {
        "position": Space(np.float32, (5,)),
        "reward": Space(np.float32, ()),
        "is_first": Space(bool, ()),
        "is_last": Space(bool, ()),
        "is_terminal": Space(bool, ()),
    }


def fake_batch(B=3, L=9, *, deter=64, stoch=8, classes=4, act_dim=2):
    """A replay batch ``{key: [B, L, ...]}`` for :func:`vector_obs_space` with random values and an episode start at step 3."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = {
        "position": rng.normal(size=(B, L, 5)).astype(np.float32),
        "reward": rng.normal(size=(B, L)).astype(np.float32),
        "is_first": np.zeros((B, L), bool),
        "is_last": np.zeros((B, L), bool),
        "is_terminal": rng.random((B, L)) < 0.1,
        "action": rng.uniform(-1, 1, (B, L, act_dim)).astype(np.float32),
        "deter": rng.normal(size=(B, L, deter)).astype(np.float16),
        "stoch": rng.integers(0, classes, (B, L, stoch)).astype(np.uint8),
    }
    data["is_first"][:, 3] = True
    return data


def wait_for(predicate, timeout=5.0):
    """Polls ``predicate`` every 20 ms until it holds or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def wait_until(predicate, timeout, what):
    """Polls ``predicate`` every 0.2 s; raises AssertionError naming ``what`` if it does not hold within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def chunk_of(schema, steps, *, first=False, last=False, reward=1.0):
    """A zero-filled experience chunk of ``steps`` steps for ``schema`` (reward, is_first, is_last set)."""
    import numpy as np

    arrays = {k: np.zeros((steps, *shape), dtype) for k, (dtype, shape) in schema.items()}
    arrays["reward"][:] = reward
    arrays["is_first"][0] = first
    arrays["is_last"][-1] = last
    return arrays
