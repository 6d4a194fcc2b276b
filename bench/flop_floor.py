"""The arithmetic floor of one training update: its matrix FLOPs ÷ this core's peak.

Counts the FLOPs of every matrix product and convolution in one update
(forward and backward, ``torch.utils.flop_counter``; gathers, softmaxes and
other elementwise work are not counted, so the floor is a lower bound on the
time), measures the single-thread matrix-product rate of this core in fp32 and
bf16 on shapes taken from the update, and prints one JSON line per workload:
the time the products alone would take at peak and the updates/s that bounds.

    python bench/flop_floor.py --exp ref_sheeprl_xs
    python bench/flop_floor.py --presets 1m 12m
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import emit, machine, median_seconds
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import synthetic_batch

from reverie import envs
from reverie.agent.builder import build_agent
from reverie.cli.config import compose


def peak_matmul_flops(dtype: torch.dtype, m: int, k: int, n: int, repeats: int = 20) -> float:
    """Median FLOP/s of an (m×k)·(k×n) product on this thread (best case: one big product)."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    start = time.perf_counter()
    a @ b
    once = time.perf_counter() - start
    if once > 0.5:
        # No fast kernel for this dtype here (bf16 on a CPU without AVX-512 bf16: 2.8 s for 1024³ in session 13,
        # ~60× fp32): one call says enough, 23 would take minutes.
        return 2 * m * k * n / once
    return 2 * m * k * n / median_seconds(lambda: a @ b, repeats)


def count_update_flops(overrides: list[str]) -> tuple[int, dict[str, int], dict]:
    """FLOPs of the matrix products in one eager training update, total and per operator."""
    cfg = compose([*overrides, "compile=false", "precision=fp32"])
    torch.manual_seed(0)
    env = envs.from_config(cfg, seed=0)
    agent = build_agent(cfg, env.obs_space, env.act_space)
    batch = synthetic_batch(env, agent, cfg.batch_size, cfg.batch_length + 1, np.random.default_rng(0))
    agent.train_step(batch)  # first update allocates optimiser state; count the second
    counter = FlopCounterMode(display=False)
    with counter:
        agent.train_step(batch)
    per_op = {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), per_op, {"preset": cfg.size.name, "batch": [cfg.batch_size, cfg.batch_length]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["1m", "12m"], help="size presets to count")
    parser.add_argument("--exp", default=None, help="an exp= preset to count instead of --presets")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # The best rate over shapes like the update's largest products (1024-row
    # batches, 15·1024 imagined states through 256-wide layers) and a big
    # square one: the higher the peak, the lower (safer) the floor.
    shapes = [(1024, 1024, 1024), (4096, 1024, 1024), (15360, 256, 256)]
    peaks = {
        name: max(peak_matmul_flops(dtype, *shape) for shape in shapes)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    runs = [[f"exp={args.exp}"]] if args.exp else [[f"size={p}"] for p in args.presets]
    for base in runs:
        flops, per_op, info = count_update_flops([*base, *args.overrides])
        record = {
            "name": "flop_floor",
            **info,
            "overrides": [*base, *args.overrides],
            "update_gflop": flops / 1e9,
            "per_op_gflop": {k: v / 1e9 for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "threads": 1,
        }
        for precision, peak in peaks.items():
            record[f"peak_gflop_s_{precision}"] = peak / 1e9
            record[f"floor_s_{precision}"] = flops / peak
            record[f"max_updates_per_s_{precision}"] = peak / flops
        record["machine"] = machine()
        emit(record)


if __name__ == "__main__":
    main()
