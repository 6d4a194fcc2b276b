"""Deadline misses and tick jitter of the fixed-rate loop driving an onnxruntime policy.

Exports a policy of each preset (weights do not matter for timing) in each
``--formats`` (``split``: the two-part step, whose advance the loop runs
between ticks and whose observe part it warms just before each tick;
``split_nowarm``: the same without that pre-tick warm; ``fused``: one
graph), drives ``dmc/cartpole_swingup`` (vector
observations) for ``--seconds`` at the given rate, and prints one JSON line
per run (``advance_*`` fields: the two-part step's off-path advance).

    python bench/loop_deadlines.py --runs 1m:500 12m:100 --seconds 60 --formats split fused
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import emit, machine

from reverie import envs
from reverie.agent.builder import build_agent
from reverie.cli.config import compose
from reverie.realtime.export import export_policy
from reverie.realtime.loop import ControlLoop
from reverie.realtime.runtime import PolicyRuntime


class WithoutWarmUp:
    """A runtime whose ``warm_up`` the loop cannot see: the two-part step without the pre-tick warm (``split_nowarm``)."""

    def __init__(self, runtime: PolicyRuntime) -> None:
        self.reset, self.step, self.advance, self.action_sent = runtime.reset, runtime.step, runtime.advance, runtime.action_sent


def run(preset: str, rate_hz: float, seconds: float, env_name: str, spin_us: float, out: Path | None, form: str = "split") -> dict:
    split = form != "fused"
    env = envs.make(env_name, seed=0)
    torch.manual_seed(0)
    agent = build_agent(compose([f"size={preset}"]), env.obs_space, env.act_space).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.onnx"
        export_policy(agent, path, obs_space=env.obs_space, split=split)
        runtime = PolicyRuntime(path, threads=1)
    policy = WithoutWarmUp(runtime) if form == "split_nowarm" else runtime
    loop = ControlLoop(env, policy, rate_hz=rate_hz, spin_s=spin_us * 1e-6)
    stats = loop.run(seconds=seconds)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stats.histogram_png(out / f"latency_{preset}_{int(rate_hz)}hz{'' if form == 'split' else '_' + form}.png")
    return {
        "name": "loop_deadlines",
        "preset": preset,
        "format": form,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "env": env_name,
        "spin_us": spin_us,
        **stats.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=["1m:500", "12m:100"], help="preset:rate_hz pairs")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--env", default="dmc/cartpole_swingup")
    parser.add_argument("--spin-us", type=float, default=1500.0, help="busy-wait this long before each tick (lower jitter)")
    parser.add_argument("--out", default=None, help="folder for latency histograms")
    parser.add_argument("--formats", nargs="*", default=["split"], choices=["split", "split_nowarm", "fused"], help="policy step formats")
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine()
    for item in args.runs:
        preset, rate = item.split(":")
        for form in args.formats:
            out = Path(args.out) if args.out else None
            emit({**run(preset, float(rate), args.seconds, args.env, args.spin_us, out, form), "machine": info})


if __name__ == "__main__":
    main()
