"""Data-parallel scaling of the Dreamer update: replayed steps per second on 1 rank and on N ranks (torchrun, gloo on CPU).

Each rank trains the same model on its own batch (``--batch`` × ``--length``
sequences of a task's replay steps, random values of the right form), and the
gradients are averaged over the ranks every update (:mod:`reverie.agent.distributed`).
Replayed steps/s = ranks × batch × length × updates/s; the scaling efficiency
is that of N ranks over N × that of one. Also printed: the bytes each update
all-reduces (the gradients: 4 bytes × parameters) and the time of one
all-reduce of that size measured here.

    python bench/data_parallel.py --ranks 1 2 --preset 1m --updates 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()


def fake_batch(obs_space, act_space, batch: int, length: int, deter: int, stoch: int, classes: int, seed: int) -> dict:
    """A replay batch of the right keys, dtypes and shapes with random values."""
    rng = np.random.default_rng(seed)
    data = {}
    for key, space in obs_space.items():
        if space.dtype == bool:
            data[key] = np.zeros((batch, length, *space.shape), bool)
        elif space.dtype == np.uint8:
            data[key] = rng.integers(0, 256, (batch, length, *space.shape), dtype=np.uint8)
        else:
            data[key] = rng.normal(size=(batch, length, *space.shape)).astype(space.dtype)
    data["is_first"][:, 0] = True
    data["action"] = rng.uniform(-1, 1, (batch, length, *act_space.shape)).astype(np.float32)
    data["deter"] = (0.1 * rng.normal(size=(batch, length, deter))).astype(np.float16)
    data["stoch"] = rng.integers(0, classes, (batch, length, stoch)).astype(np.uint8)
    return data


def worker(args: argparse.Namespace) -> None:
    """One rank (run by torchrun): timed updates; rank 0 prints the result as JSON."""
    import torch.distributed as dist

    from reverie import envs
    from reverie.agent.builder import build_agent
    from reverie.agent.distributed import DataParallel
    from reverie.cli.config import compose

    torch.set_num_threads(args.threads)
    cfg = compose([f"size={args.preset}", f"env={args.env}", f"batch_size={args.batch}", f"batch_length={args.length}"])
    env = envs.make(args.env)
    torch.manual_seed(0)
    agent = build_agent(cfg, env.obs_space, env.act_space)
    if args.compile:
        agent.compile()
    parallel = DataParallel.from_env(torch.device("cpu"))
    rank = 0 if parallel is None else parallel.rank
    if parallel is not None:
        parallel.broadcast_module(agent)
        agent.parallel = parallel
    batch = fake_batch(
        env.obs_space, env.act_space, args.batch, args.length + 1, cfg.size.deter, cfg.algo.rssm.stoch, cfg.size.classes, seed=rank
    )
    for _ in range(args.warmup):
        agent.train_step(batch)
    times = []
    for _ in range(args.updates):
        start = time.perf_counter()
        _, latents = agent.train_step(batch)
        times.append(time.perf_counter() - start)
    world = 1 if parallel is None else parallel.world
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    allreduce_s = exchange_s = exchange_bytes = None
    if parallel is not None:
        flat = torch.zeros(params)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(10):
            dist.all_reduce(flat)
        allreduce_s = (time.perf_counter() - start) / 10
        # What the training loops exchange after each update besides the gradients: every rank's refreshed
        # replay latents (and positions), all-gathered as Python objects over gloo (agent/updater.py).
        pos = np.zeros((args.batch, args.length), np.int64)
        change = (pos, latents, np.zeros(0, np.int64), 0)
        exchange_bytes = pos.nbytes + sum(v.nbytes for v in latents.values())
        dist.barrier()
        start = time.perf_counter()
        for _ in range(10):
            parallel.all_gather_object(change)
        exchange_s = (time.perf_counter() - start) / 10
    if rank == 0:
        median = float(np.median(times))
        print(
            json.dumps(
                {
                    "bench": "data_parallel",
                    "preset": args.preset,
                    "env": args.env,
                    "ranks": world,
                    "threads_per_rank": args.threads,
                    "compiled": bool(args.compile),
                    "batch_per_rank": [args.batch, args.length],
                    "update_s_median": median,
                    "updates_per_s": 1 / median,
                    "replayed_steps_per_s": world * args.batch * args.length / median,
                    "params": params,
                    "allreduce_bytes_per_update": 4 * params,
                    "allreduce_s": allreduce_s,
                    "replay_exchange_bytes_per_rank": exchange_bytes,
                    "replay_exchange_s": exchange_s,
                }
            ),
            flush=True,
        )
    if parallel is not None:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--env", default="dmc/cartpole_swingup")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first (they include compilation)")
    parser.add_argument("--compile", type=int, default=0, help="1: torch.compile the hot modules, as training does by default")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    passthrough = [
        f"--{k}={v}" for k, v in vars(args).items() if k in ("preset", "env", "batch", "length", "threads", "updates", "warmup", "compile")
    ]
    for ranks in args.ranks:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            str(HERE),
            "--worker",
            *passthrough,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{ranks} ranks failed:\n{out.stderr[-3000:]}")
        row = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["ranks"] == 1), None)
    if base is not None:
        for row in rows:
            if row["ranks"] > 1:
                speedup = row["replayed_steps_per_s"] / base["replayed_steps_per_s"]
                print(
                    json.dumps(
                        {"bench": "data_parallel_scaling", "ranks": row["ranks"], "speedup": speedup, "efficiency": speedup / row["ranks"]}
                    )
                )


if __name__ == "__main__":
    main()
