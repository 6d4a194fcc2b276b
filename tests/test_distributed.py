"""Data-parallel updates over torch.distributed (gloo on CPU): two ranks of B equal one process of 2B."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.serial
def test_two_ranks_of_b_equal_one_process_of_2b(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # torchrun as a user runs it; --standalone picks a free rendezvous port on this host.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "dp_update.py"),
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=HERE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    sys.path.insert(0, str(HERE))
    import dp_update

    saved = torch.rand, torch.randn_like
    try:
        agent, batch = dp_update.agent_and_batch()
        single = dp_update.train(agent, batch, slice(None))
    finally:
        torch.rand, torch.randn_like = saved
    for part in ("params", "slow", "retnorm", "moments"):
        for key, want in single[part].items():
            items = want.items() if isinstance(want, dict) else [(None, want)]
            for name, value in items:
                for rank in ranks:
                    got = rank[part][key] if name is None else rank[part][key][name]
                    assert torch.allclose(got, value, rtol=1e-5, atol=1e-5), (part, key, name, (got - value).abs().max())
    moved = sum((single["params"][k] - v).abs().sum() for k, v in dp_update.agent_and_batch()[0].named_parameters())
    assert moved > 0  # the updates changed the parameters, so the comparison means something
