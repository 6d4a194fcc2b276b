"""Training updates per second at batch 16 × 64, per size preset, device and precision.

Prints one JSON line per measurement. Example:

    python bench/train_throughput.py --presets 1m 12m --threads 1 2
    python bench/train_throughput.py --exp ref_sheeprl_xs --threads 1
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import numpy as np
import torch
from common import emit, machine

from reverie import envs
from reverie.agent.allocator import reuse_freed_memory_when
from reverie.agent.builder import build_agent
from reverie.agent.train import resolve_device
from reverie.cli.config import compose


def synthetic_batch(env: envs.Env, agent, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random data with the env's spaces (throughput does not depend on the values)."""
    data = {}
    for key, space in env.obs_space.items():
        shape = (batch, length, *space.shape)
        if space.dtype == np.uint8:
            data[key] = rng.integers(0, 255, shape, dtype=np.uint8)
        elif space.dtype == np.bool_:
            data[key] = np.zeros(shape, bool)
        else:
            data[key] = rng.standard_normal(shape).astype(space.dtype)
    data["is_first"][:, 0] = True
    data["action"] = rng.uniform(-1, 1, (batch, length, env.act_space.shape[0])).astype(np.float32)
    rssm = agent.wm.rssm
    data["deter"] = np.zeros((batch, length, rssm.deter), np.float16)
    data["stoch"] = rng.integers(0, rssm.classes, (batch, length, rssm.stoch), dtype=np.uint8)
    return data


def measure(overrides: list[str], *, updates: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = compose(overrides)
    torch.manual_seed(0)
    env = envs.from_config(cfg, seed=0)
    device = resolve_device(cfg.device)
    # As training sets it up (agent/parts.py). Process-wide once on: compare reuse_freed_memory=false and true
    # in two invocations.
    reused = reuse_freed_memory_when(bool(cfg.reuse_freed_memory), device.type)
    agent = build_agent(cfg, env.obs_space, env.act_space).to(device)
    if cfg.compile:
        agent.compile()
    batch = synthetic_batch(env, agent, cfg.batch_size, cfg.batch_length + 1, np.random.default_rng(0))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    times, warmup_times = [], []
    for i in range(warmup + updates):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            agent.train_step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        (times if i >= warmup else warmup_times).append(time.perf_counter() - start)
    median = statistics.median(times)
    params = sum(p.numel() for n, p in agent.named_parameters() if not n.startswith("slow_critic."))
    return {
        "name": "train_throughput",
        "preset": cfg.size.name,
        "env": cfg.env.name,
        "obs": cfg.obs,
        "device": device.type,
        "precision": cfg.precision,
        "compile": bool(cfg.compile),
        "reuse_freed_memory": reused,
        "warmup_s": sum(warmup_times),  # includes torch.compile's compile time
        "threads": threads,
        "batch": [cfg.batch_size, cfg.batch_length],
        "updates_per_s": 1.0 / median,
        "replayed_steps_per_s": cfg.batch_size * cfg.batch_length / median,
        "update_s_median": median,
        "update_s_min": min(times),
        "update_s_max": max(times),
        "updates": updates,
        "params": params,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,  # Linux: KiB
        "overrides": overrides,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["1m", "12m"], help="size presets to measure")
    parser.add_argument("--exp", default=None, help="an exp= preset to measure instead of --presets (e.g. ref_sheeprl_xs)")
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 2], help="torch thread counts")
    parser.add_argument("--precision", nargs="*", default=["fp32"], help="fp32 and/or bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", nargs="*", default=["true"], help="true and/or false")
    parser.add_argument("--updates", type=int, default=10, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. obs=pixels")
    args = parser.parse_args()
    runs = [[f"exp={args.exp}"]] if args.exp else [[f"size={p}"] for p in args.presets]
    for base in runs:
        for compiled in args.compile:
            for precision in args.precision:
                for threads in args.threads:
                    overrides = [*base, f"precision={precision}", f"device={args.device}", f"compile={compiled}", *args.overrides]
                    emit(measure(overrides, updates=args.updates, warmup=args.warmup, threads=threads))


if __name__ == "__main__":
    main()
