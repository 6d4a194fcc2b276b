"""The device and precision paths a GPU learner takes, exercised on the CPU.

No device machine was lent to this project's sessions, so the CUDA run itself
is untested; what it shares with the CPU (device resolution, bf16 autocast
around the update, tensors moved with ``non_blocking``) is tested here.
"""

import json

import numpy as np
import pytest
import torch

from reverie.agent.train import resolve_device
from reverie.cli.main import main


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda"):
        resolve_device("tpu")


def test_precision_defaults_to_the_papers_bf16_on_a_gpu_and_fp32_on_the_cpu():
    from reverie.agent.run import resolve_precision
    from reverie.cli.config import compose

    assert compose([]).precision == "auto"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("fp32", torch.device("cuda", 0)) == "fp32" and resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ValueError, match="valid: fp32, bf16, auto"):
        resolve_precision("fp16", torch.device("cpu"))


def test_bf16_training_runs_and_stays_finite(tiny_overrides, tmp_path):
    """``precision=bf16``: the update runs under bf16 autocast (as on a GPU) and every logged loss is finite."""
    assert main(["train", "env=fake/vector", "env.time_limit=20", "steps=80", "precision=bf16", "device=auto", *tiny_overrides]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [v for m in lines for k, v in m.items() if k.startswith("loss/")]
    assert losses and all(v is not None and np.isfinite(v) for v in losses)


def test_bf16_autocast_changes_the_matrix_products_not_the_parameters():
    """Under autocast the products run in bf16 while parameters and their gradients stay fp32."""
    from reverie.world_model.nets import MLP

    torch.manual_seed(0)
    net = MLP(8, 2, 16)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    exact = net(x)
    # bf16 keeps 8 bits of mantissa: close to fp32, but not equal.
    assert not torch.equal(out.float(), exact) and torch.allclose(out.float(), exact, atol=0.05, rtol=0.05)


def test_batches_are_pinned_only_for_a_gpu(monkeypatch):
    """Pinned (page-locked) host memory is for CPU → GPU copies; on the CPU path nothing is pinned (pinning needs CUDA)."""
    from conftest import TINY, fake_batch, vector_obs_space

    from reverie.agent.builder import build_agent
    from reverie.cli.config import compose
    from reverie.envs.base import Space

    agent = build_agent(compose(list(TINY)), vector_obs_space(), Space("float32", (2,), -1.0, 1.0))
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: pinned.append(self.shape) or self)
    tensors = agent._to_tensors(fake_batch(B=2, deter=32, stoch=4))
    assert not pinned and all(t.device.type == "cpu" for t in tensors.values())
    monkeypatch.setattr(type(agent), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)  # no GPU here: only the host side of the copy runs
    agent._to_tensors(fake_batch(B=2, deter=32, stoch=4))
    assert len(pinned) == len(tensors)  # every array of the batch went through page-locked memory
