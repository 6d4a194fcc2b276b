"""One Dreamer update of a tiny V3 agent on a fixed batch, on one process or as one rank of a torchrun job.

``python -m torch.distributed.run --nproc_per_node 2 tests/dp_update.py OUT`` makes each rank train on its
half of the batch (rank r: sequences r·B/2 … (r+1)·B/2) with gradients averaged over the ranks, and save its
state to ``OUT/rank<r>.pt``; ``tests/test_distributed.py`` compares it with one process on the whole batch.
Sampling is made deterministic (constant uniforms and normals), so the only difference between the two is
how the batch is split.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY, fake_batch, vector_obs_space  # noqa: E402

from reverie.agent.builder import build_agent  # noqa: E402
from reverie.cli.config import compose  # noqa: E402
from reverie.envs.base import Space  # noqa: E402

BATCH = 4
UPDATES = 2


def fixed_noise() -> None:
    """Replaces torch's random draws by constants of the same shape: each row's draws no longer depend on the batch size."""
    torch.rand = lambda *shape, **kw: torch.full(
        shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)) else shape, 0.37, **kw
    )
    torch.randn_like = lambda x, **kw: torch.full_like(x, 0.21, **kw)


def agent_and_batch():
    torch.manual_seed(0)
    agent = build_agent(compose([*TINY, "algo=dreamerv3"]), vector_obs_space(), Space("float32", (2,), -1.0, 1.0))
    return agent, fake_batch(B=BATCH, deter=32, stoch=4)


def state(agent) -> dict:
    return {
        "params": {k: v.detach().clone() for k, v in agent.named_parameters()},
        "slow": {k: v.detach().clone() for k, v in agent.slow_critic.named_parameters()},
        "retnorm": {k: v.clone() for k, v in agent.retnorm.named_buffers()},
        "moments": {
            k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)} for k, s in agent.optimizer.state_dict()["state"].items()
        },
    }


def train(agent, batch, rows: slice) -> dict:
    fixed_noise()
    part = {k: v[rows] for k, v in batch.items()}
    for _ in range(UPDATES):
        agent.train_step(part)
    return state(agent)


if __name__ == "__main__":
    from reverie.agent.distributed import DataParallel

    torch.set_num_threads(1)
    parallel = DataParallel.from_env(torch.device("cpu"))
    agent, batch = agent_and_batch()
    agent.parallel = parallel
    parallel.broadcast_module(agent)
    half = BATCH // parallel.world
    result = train(agent, batch, slice(parallel.rank * half, (parallel.rank + 1) * half))
    torch.save(result, Path(sys.argv[1]) / f"rank{parallel.rank}.pt")
