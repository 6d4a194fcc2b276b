"""Hot-swapping published weights into a running control loop: deadline misses and swap latency.

A stand-in learner process (niced like the learner of ``reverie run``) publishes the exported policy of a preset as
versions 1…N every ``--interval`` seconds (and drains the experience the
actor streams). The real :class:`reverie.realtime.actor.Actor` runs
``dmc/cartpole_swingup`` at the given rate: its subscriber thread verifies
each version, builds and warms up the onnxruntime session, and the loop
swaps it in between two ticks. One JSON line per run: ticks, deadline misses,
skipped ticks, swaps, and the latency from publication to the first tick
that used the new version (p50, max).

    python bench/hot_swap.py --runs 1m:500 12m:100 --swaps 100
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, machine

ENV = "dmc/cartpole_swingup"


def _overrides(preset: str, rate_hz: float, tmp: str, priority: int) -> list[str]:
    return [
        f"size={preset}",
        f"env={ENV}",
        f"realtime.rate_hz={rate_hz}",
        f"realtime.priority={priority}",
        f"logdir={tmp}/run",
        f"realtime.ipc_dir={tmp}/ipc",
    ]


def _learner(overrides: list[str], swaps: int, interval: float, ready: mp.Event) -> None:
    import os

    import torch

    from reverie.realtime.launcher import LEARNER_NICE

    os.nice(LEARNER_NICE)  # as `reverie run` starts its learner

    from reverie import envs
    from reverie.agent.builder import build_agent
    from reverie.cli.config import compose
    from reverie.realtime.channels import ExperienceReceiver, WeightPublisher
    from reverie.realtime.endpoints import endpoints
    from reverie.realtime.export import export_policy

    cfg = compose(overrides)
    env = envs.make(ENV)
    torch.manual_seed(0)
    agent = build_agent(cfg, env.obs_space, env.act_space).eval()
    path = Path(cfg.logdir) / "published.onnx"
    export_policy(agent, path, obs_space=env.obs_space, metadata={"env": ENV, "size": cfg.size.name})
    where = endpoints(cfg, bind=True)
    receiver = ExperienceReceiver(where.experience)
    publisher = WeightPublisher(where.weights)
    ready.set()
    # Publish once the actor streams (its loop runs and it has subscribed).
    deadline = time.monotonic() + 120
    while not receiver.receive(timeout=0.1) and time.monotonic() < deadline:
        pass
    time.sleep(0.5)
    for version in range(1, swaps + 1):
        publisher.publish(version, path)
        end = time.monotonic() + interval
        while time.monotonic() < end:
            receiver.receive(timeout=0.01)
    receiver.close()
    publisher.close()


def run(preset: str, rate_hz: float, swaps: int, interval: float, priority: int = 0) -> dict:
    from reverie.cli.config import compose
    from reverie.realtime.actor import Actor

    with tempfile.TemporaryDirectory() as tmp:
        overrides = _overrides(preset, rate_hz, tmp, priority)
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        learner = ctx.Process(target=_learner, args=(overrides, swaps, interval, ready), daemon=True)
        learner.start()
        ready.wait(120)
        actor = Actor(compose(overrides))
        status = actor.run(seconds=5.0 + swaps * interval + 1.0, handle_signals=False)
        learner.join(30)
        stats = actor.loop.stats.summary()
        latency = np.asarray(actor.swap_latency_ms)
    return {
        "name": "hot_swap",
        "preset": preset,
        "rate_hz": rate_hz,
        "priority": priority,
        "env": ENV,
        "published": swaps,
        "swaps": status["swaps"],
        "weights_refused": status["weights_refused"],
        "ticks": stats["ticks"],
        "deadline_misses": stats["deadline_misses"],
        "skipped": stats["skipped"],
        "latency_p99_us": stats["latency_p99_us"],
        "latency_p999_us": stats["latency_p999_us"],
        "jitter_p999_us": stats["jitter_p999_us"],
        "swap_latency_p50_ms": float(np.median(latency)) if latency.size else None,
        "swap_latency_max_ms": float(latency.max()) if latency.size else None,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["1m:500", "12m:100"], help="PRESET:RATE_HZ")
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between publications")
    parser.add_argument("--priority", type=int, default=0, help="SCHED_FIFO priority of the control thread (0: normal)")
    args = parser.parse_args()
    for spec in args.runs:
        preset, rate = spec.split(":")
        emit(run(preset, float(rate), args.swaps, args.interval, args.priority))


if __name__ == "__main__":
    main()
