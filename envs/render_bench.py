"""Measures DMC render speed and pixel changes for the render options.

Usage::

    python -m reverie.envs.render_bench cartpole_swingup walker_walk \
        --frames 50 --repeats 5

For each task it records ``frames`` physics states from random actions, then
renders every state with each configuration and reports renders/s (median
over ``repeats`` passes) and the max/mean absolute pixel difference against
the faithful reference (dm_control's defaults: shadows and reflections on).
It also checks that the reference equals ``physics.render`` pixel for pixel.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np

from .dmc import DMC

#: name -> DMC render options; "reference" is dm_control's stock look.
CONFIGS: dict[str, dict[str, Any]] = {
    "reference": {"shadows": True, "reflections": True},
    "default": {},
    "flag_off": {"shadows": True},
    "shadowed_no_refl": {"shadows": True},
    "reflections": {"reflections": True},
    "shadows_512": {"shadows": True, "reflections": True, "shadow_size": 512},
    "no_antialias": {"antialias": False},
    "no_skybox": {"skybox": False},
}

#: name -> MuJoCo render flags forced after construction. "flag_off" is the
#: former default: the shadow flag off, which also dims some floors.
FLAG_OVERRIDES: dict[str, dict[str, bool]] = {
    "flag_off": {"shadow": False, "reflection": False},
    "shadowed_no_refl": {"reflection": False},
}


def _render(env: DMC, state: np.ndarray) -> np.ndarray:
    env.physics.set_state(state)
    env.physics.forward()
    return env.render()


def bench_task(task: str, frames: int, repeats: int, size: int) -> list[dict[str, float | str]]:
    """Benchmarks one task; returns one row per configuration."""
    rng = np.random.default_rng(0)
    recorder = DMC(task, obs="vector", seed=0)
    recorder.reset()
    states = []
    for _ in range(frames):
        recorder.step(rng.uniform(*recorder.act_bounds).astype(np.float32))
        states.append(recorder.physics.get_state().copy())
    envs = {name: DMC(task, obs="pixels", size=(size, size), seed=0, **opts) for name, opts in CONFIGS.items()}
    for name, flags in FLAG_OVERRIDES.items():
        envs[name]._flags.update(flags)
    images: dict[str, np.ndarray] = {}
    rates: dict[str, list[float]] = {name: [] for name in envs}
    for name, env in envs.items():  # Untimed warm-up pass; keeps the frames.
        env.reset()
        images[name] = np.stack([_render(env, state) for state in states])
    for _ in range(repeats):  # Timed passes, interleaved so drift hits all alike.
        for name, env in envs.items():
            start = time.perf_counter()
            for state in states:
                _render(env, state)
            rates[name].append(len(states) / (time.perf_counter() - start))
    reference = images["reference"]
    ref_env = envs["reference"]
    stock = ref_env.physics.render(size, size, camera_id=ref_env._camera_id)
    if not np.array_equal(stock, _render(ref_env, states[-1])):
        raise AssertionError(f"{task}: reference differs from physics.render")
    darker = images["shadowed_no_refl"].astype(np.int16) - images["default"].astype(np.int16)
    if darker.max() > 2:
        raise AssertionError(f"{task}: default frames darker than shadowed ones by {darker.max()}")
    rows: list[dict[str, float | str]] = []
    for name, env in envs.items():
        diff = np.abs(images[name].astype(np.int16) - reference.astype(np.int16))
        rows.append(
            {
                "task": task,
                "config": name,
                "renders_per_s": statistics.median(rates[name]),
                "max_diff": float(diff.max()),
                "mean_diff": float(diff.mean()),
            }
        )
        env.close()
    recorder.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tasks", nargs="*", default=["cartpole_swingup"])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    print(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}, {args.size}x{args.size}, {args.frames} frames x {args.repeats} repeats")
    print("| task | config | renders/s | speed-up | max diff | mean diff |")
    print("|---|---|---:|---:|---:|---:|")
    for task in args.tasks:
        rows = bench_task(task, args.frames, args.repeats, args.size)
        base = float(rows[0]["renders_per_s"])
        for row in rows:
            rate = float(row["renders_per_s"])
            print(
                f"| {row['task']} | {row['config']} | {rate:.0f} | {rate / base:.1f}x | {row['max_diff']:.0f} | {row['mean_diff']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
