"""Learning benchmark: train seeds on one or more tasks, then summarise their curves as JSON and plots.

Runs ``reverie train`` once per (task, seed) (``--parallel`` at a time, the
cores split between them), records each run's wall clock and peak memory, and
writes per task ``<out>/<task>/summary.json`` and ``<out>/<task>/curve.png``:
return against environment steps, with the official DreamerV3 curve (mean and
range over its 5 seeds, from ``docs/bench/official_dmc_proprio_dreamerv3.json``)
drawn in, and against wall-clock minutes. Runs resume when rerun.

    python bench/learning.py --envs dmc/cartpole_swingup dmc/reacher_easy dmc/cheetah_run --steps 100000 --seeds 0 1
    python bench/learning.py --summarize-only --env dmc/cartpole_swingup --out bench/out/cartpole --logdirs /work/runs/cartpole_swingup/*

A ``reverie run`` logdir (``make run``) works too: its evaluations come from
the launcher's ``eval.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import emit, machine

#: Figures of the official DreamerV3 DMC-proprio curves (5 seeds each), taken from danijar/dreamerv3's
#: scores/dmc_proprio-dreamerv3.json.gz: per task, environment steps and the mean, min and max score.
OFFICIAL = Path(__file__).resolve().parent.parent / "docs" / "bench" / "official_dmc_proprio_dreamerv3.json"
TASKS = ("dmc/cartpole_swingup", "dmc/reacher_easy", "dmc/cheetah_run")


def official_curve(env: str) -> dict | None:
    """``{steps, mean, min, max}`` of the official DreamerV3 runs on ``env`` (None when the file has no such task)."""
    if not OFFICIAL.exists():
        return None
    return json.loads(OFFICIAL.read_text())["tasks"].get(env)


def official_at(env: str, step: int) -> float | None:
    """The official mean score at ``step`` environment steps (None outside the curve)."""
    curve = official_curve(env)
    if curve is None or step not in curve["steps"]:
        return None
    return curve["mean"][curve["steps"].index(step)]


def run_seeds(args: argparse.Namespace, env: str) -> dict[int, dict]:
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    pending = list(args.seeds)
    running: dict[int, tuple[int, float, Path]] = {}
    results: dict[int, dict] = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            seed = pending.pop(0)
            logdir = Path(args.root) / f"{env.replace('/', '_')}-seed{seed}"
            cmd = [
                sys.executable,
                "-m",
                "reverie.cli.main",
                "train",
                f"env={env}",
                f"steps={args.steps}",
                f"seed={seed}",
                f"threads={threads}",
                "progress=false",
                f"logdir={logdir}",
                *args.overrides,
            ]
            log = open(f"{logdir}.log", "a")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running[proc.pid] = (seed, time.time(), logdir)
        pid, status, usage = os.wait4(-1, 0)
        if pid in running:
            seed, start, logdir = running.pop(pid)
            results[seed] = {
                "seed": seed,
                "logdir": str(logdir),
                "exit": os.waitstatus_to_exitcode(status),
                "wall_s": time.time() - start,
                "peak_rss_mb": usage.ru_maxrss / 1024,
            }
    return results


def run_label(logdir: Path) -> str:
    """``<algo>-<size>[-<precision>][-randomized]-seed<seed>`` from the run's config.yaml (the folder name when there is none)."""
    config = logdir / "config.yaml"
    if not config.exists():
        return logdir.name
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(config)
    precision = cfg.get("precision", "fp32")  # named only when chosen: auto is fp32 on the CPU
    randomize = OmegaConf.select(cfg, "env.randomize", default=None)
    # Any key off its default (factor ranges [1, 1], zero noise, delay and dropout) marks a run trained with env.randomize.
    values = OmegaConf.to_container(randomize).values() if randomize is not None else []
    randomized = any(v not in ([1.0, 1.0], [0.0, 0.0], 0, 0.0, None) for v in values)
    tags = ("" if precision in ("fp32", "auto") else "-" + precision) + ("-randomized" if randomized else "")
    return f"{cfg.algo.name}-{cfg.size.name}{tags}-seed{cfg.seed}"


def launcher_evals(logdir: Path, lines: list[dict]) -> list[tuple[int, float, float | None]]:
    """``reverie run``'s evaluations (``eval.jsonl``, written by its launcher rather than the learner).

    Lines without ``time/wall_s`` (runs before it was recorded) take the
    wall clock of the learner's first metrics line at or after their step.
    """
    path = logdir / "eval.jsonl"
    if not path.exists():
        return []
    timed = sorted((m["step"], m["time/wall_s"]) for m in lines if m.get("time/wall_s") is not None)
    out = []
    for line in path.read_text().splitlines():
        m = json.loads(line)
        wall = m.get("time/wall_s")
        if wall is None:
            wall = next((w for step, w in timed if step >= m["step"]), None)
        out.append((m["step"], m["eval/return"], wall))
    return out


def summarize(logdirs: list[Path], env: str, runs: dict[int, dict] | None = None) -> dict:
    per_run = []
    for logdir in logdirs:
        lines = [json.loads(x) for x in (logdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        evals = [(m["step"], m["eval/return"], m.get("time/wall_s")) for m in lines if m.get("eval/return") is not None]
        evals = sorted(evals + launcher_evals(logdir, lines))
        episodes = [(m["step"], m["episode/return"]) for m in lines if m.get("episode/return") is not None]
        rss = [m["train/max_rss_mb"] for m in lines if "train/max_rss_mb" in m]
        nonfinite = sum(1 for m in lines for k, v in m.items() if k.startswith("loss/") and v is None)
        ref = official_at(env, 100_000)
        reached = next(((s, w) for s, r, w in evals if ref is not None and r >= ref), None)
        entry = {
            "logdir": str(logdir),
            "label": run_label(logdir),
            "evals": evals,
            "episodes": episodes,
            "final_eval": evals[-1][1] if evals else None,
            "best_eval": max((r for _, r, _ in evals), default=None),
            "steps": max((m["step"] for m in lines), default=0),
            "first_step_at_reference": reached[0] if reached else None,
            "wall_s_at_reference": reached[1] if reached else None,
            "train_wall_s": max((m.get("time/wall_s") or 0 for m in lines), default=0),
            "max_rss_mb": max(rss, default=None),
            "nonfinite_loss_lines": nonfinite,
        }
        per_run.append(entry)
    return {
        "name": "learning",
        "env": env,
        "reference_at_100k": official_at(env, 100_000),
        "runs": per_run,
        "processes": runs,
        "machine": machine(),
    }


def plot(summary: dict, path: Path) -> None:
    """Return against environment steps (with the official curve) and against wall-clock minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, wall) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    official = official_curve(summary["env"])
    if official is not None:
        ax.fill_between(official["steps"], official["min"], official["max"], color="gray", alpha=0.2, lw=0)
        ax.plot(
            official["steps"],
            official["mean"],
            color="gray",
            ls="--",
            label="official DreamerV3 published runs (train ratio 512, 16 envs; mean, range of 5 seeds)",
        )
    for i, run in enumerate(summary["runs"]):
        color = f"C{i}"
        if run["episodes"]:
            xs, ys = zip(*run["episodes"])
            ax.plot(xs, ys, color=color, alpha=0.3, lw=1)
        if run["evals"]:
            xs, ys, walls = zip(*run["evals"])
            ax.plot(xs, ys, color=color, marker="o", ms=3, label=f"{run['label']} (eval; faint: training episodes)")
            timed = [(w / 60, y) for w, y in zip(walls, ys) if w is not None]
            if timed:
                wall.plot(*zip(*timed), color=color, marker="o", ms=3, label=run["label"])
    steps = max((r["steps"] for r in summary["runs"]), default=0)
    if steps:
        ax.set_xlim(0, steps * 1.05)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(summary["env"])
    ax.legend(fontsize=7, loc="upper left")
    wall.set_xlabel("training wall clock (minutes)")
    wall.set_ylabel("eval return")
    wall.set_title(f"{summary['env']}: against wall clock")
    for a in (ax, wall):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", "--env", nargs="+", default=list(TASKS), help="tasks (default: the three of the benchmark)")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (the cores are split between them)")
    parser.add_argument("--root", default="logs/bench", help="folder of the run logdirs")
    parser.add_argument("--out", default="bench/out/learning", help="where summary.json and curve.png go (per task below it with several)")
    parser.add_argument("--summarize-only", action="store_true", help="only summarise existing --logdirs (one task)")
    parser.add_argument("--logdirs", nargs="*", default=[])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for reverie train")
    args = parser.parse_args()
    if args.summarize_only and len(args.envs) != 1:
        parser.error("--summarize-only takes one --env")
    for env in args.envs:
        out = Path(args.out) if len(args.envs) == 1 else Path(args.out) / env.replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        runs = None
        if args.summarize_only:
            logdirs = [Path(p) for p in args.logdirs]
        else:
            Path(args.root).mkdir(parents=True, exist_ok=True)
            runs = run_seeds(args, env)
            logdirs = [Path(r["logdir"]) for r in runs.values()]
        summary = summarize(logdirs, env, runs)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        plot(summary, out / "curve.png")
        emit({k: v for k, v in summary.items() if k != "machine"} | {"machine": summary["machine"]})


if __name__ == "__main__":
    main()
