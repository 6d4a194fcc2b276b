"""How the wait before a tick changes the critical path of the two-part step (why the loop warms just before it).

Exports a random-weight two-part policy (weights do not matter for timing) of
``dmc/cartpole_swingup``, vector observations, and times its observe part
(``PolicyRuntime.step``, as the loop calls it) after each of these, in
alternating blocks so that all see the same machine. Every case first runs
``advance()`` (the recurrent advance, then the warm of the observe part):

* ``no_wait``: the step follows at once;
* ``spin``: a busy-wait of ``--wait-us`` first (the loop's spin);
* ``sleep``: ``time.sleep`` of ``--wait-us`` first;
* ``spin_then_warm``: the busy-wait, with ``warm_up()`` once more
  ``--lead-us`` before its end (what ``ControlLoop`` does with ``spin_s``).

One JSON line per case with p50/p90/p99/p99.9 in µs.

    python bench/warm_wait.py --preset 1m --wait-us 1500 --lead-us 150 --blocks 6
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import emit, machine

from reverie import envs
from reverie.agent.builder import build_agent
from reverie.cli.config import compose
from reverie.realtime.export import export_policy
from reverie.realtime.runtime import PolicyRuntime

CASES = ("no_wait", "spin", "sleep", "spin_then_warm")


def spin_until(deadline: float) -> None:
    while time.perf_counter() < deadline:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="1m")
    parser.add_argument("--wait-us", type=float, default=1500.0, help="the wait between the warm and the tick")
    parser.add_argument("--lead-us", type=float, default=150.0, help="spin_then_warm: how long before the tick the warm starts")
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks of --block steps per case")
    parser.add_argument("--block", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = envs.make("dmc/cartpole_swingup", obs="vector", seed=0)
    torch.manual_seed(0)
    agent = build_agent(compose([f"size={args.preset}"]), env.obs_space, env.act_space).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_policy(agent, Path(tmp) / "p.onnx", obs_space=env.obs_space)
        runtime = PolicyRuntime(Path(tmp) / "p.onnx", threads=1, warm=True)
    # Real observations, recorded once and replayed.
    obs_seq, obs = [], env.reset(seed=0)
    for _ in range(500):
        obs_seq.append(obs)
        obs = env.step(np.zeros(env.act_space.shape, np.float32))
    wait, lead = args.wait_us * 1e-6, args.lead_us * 1e-6
    times: dict[str, list[float]] = {case: [] for case in CASES}
    for block in range(args.blocks + 1):
        for case in CASES:
            for i in range(args.block):
                start = time.perf_counter()
                action = runtime.step(obs_seq[i % len(obs_seq)])
                if block and i:  # the first block of each case warms up; step 0 follows another case's wait
                    times[case].append(time.perf_counter() - start)
                runtime.action_sent(action)
                runtime.advance()  # the recurrent advance, then the warm (as after each tick in the loop)
                if case == "spin":
                    spin_until(time.perf_counter() + wait)
                elif case == "sleep":
                    time.sleep(wait)
                elif case == "spin_then_warm":
                    tick = time.perf_counter() + wait
                    spin_until(tick - lead)
                    runtime.warm_up()
                    spin_until(tick)
    info = machine()
    for case, samples in times.items():
        us = np.array(samples) * 1e6
        p50, p90, p99, p999 = np.percentile(us, [50, 90, 99, 99.9])
        emit(
            {
                "name": "warm_wait",
                "preset": args.preset,
                "case": case,
                "wait_us": args.wait_us,
                "lead_us": args.lead_us,
                "steps": len(us),
                "p50_us": float(p50),
                "p90_us": float(p90),
                "p99_us": float(p99),
                "p999_us": float(p999),
                "machine": info,
            }
        )


if __name__ == "__main__":
    main()
