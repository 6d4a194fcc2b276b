"""Side by side: reverie runs and official DreamerV3 runs at equal settings, by environment steps.

Reads reverie's ``metrics.jsonl`` (training episodes ``episode/return``,
deterministic evaluations ``eval/return``, losses ``loss/*``) and the official
code's ``metrics.jsonl`` (training episodes ``episode/score``, losses
``train/loss/*``; its ``step`` is policy steps × action repeat, i.e.
environment steps), and writes:

* ``<out>/summary.json``: per run, the training-episode return averaged over
  windows of ``--window`` environment steps, reverie's evaluations, and the
  world-model losses at the same steps; and ``comparison``: per window, the
  official code's range over seeds (lowest and highest per-seed mean) and
  whether each reverie seed's mean lies inside it (the issue-#11 criterion;
  only windows where every run has at least ``--min-episodes`` episodes,
  and only with two or more official seeds, since one seed has no range);
  and per window the difference of mean episode return, reverie − official
  (episodes pooled over seeds), with a bootstrap interval at the
  Bonferroni-corrected level 1 − 0.05 / windows. With two seeds a side the
  range criterion fails by chance (both of two draws lie between two others
  from the same distribution 1 time in 6), so the interval says whether a
  window shows a difference larger than the episodes' noise;
* ``<out>/returns.png`` and ``<out>/losses.png``.

Only the official run's output files are read; nothing of its code is used.
``--official-summary`` takes the official runs from a summary this script wrote
before (the committed ones under ``docs/bench/parity_*``), so a new reverie run
is compared with them on a machine without the official code or its logs.

    python bench/parity.py --reverie /work/runs/parity/reverie/cartpole_swingup_r128_seed0 \\
        --official /work/runs/parity/official/cartpole_swingup_r128_seed0 --out docs/bench/parity_cartpole_swingup_r128
    python bench/parity.py --reverie RUN --out OUT \\
        --official-summary docs/bench/parity_cartpole_swingup_r128_2seeds/summary.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

#: World-model and behaviour losses, reverie key → official key.
LOSSES = {
    "loss/dyn": "train/loss/dyn",
    "loss/rep": "train/loss/rep",
    "loss/rew": "train/loss/rew",
    "loss/con": "train/loss/con",
    "loss/rec/position": "train/loss/position",
    "loss/rec/velocity": "train/loss/velocity",
    "loss/value": "train/loss/value",
    "loss/repval": "train/loss/repval",
}


def read_jsonl(path: Path) -> list[dict]:
    """The lines of a run's JSONL, without those a resume superseded.

    Both codes log at a step that never decreases within one process. A step
    lower than one already read means the run resumed from an earlier
    checkpoint and logs those steps again: the lines past it, from the
    process that stopped, are dropped (reverie now drops them itself at
    resume; the official code and older reverie runs do not).
    """
    rows: list[dict] = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written while we read, or torn by a kill
            continue
        if rows and row["step"] < rows[-1]["step"]:
            rows = [r for r in rows if r["step"] <= row["step"]]
        rows.append(row)
    return rows


def load(logdir: Path, kind: str) -> dict:
    """Episodes ``[(step, return)]``, evaluations and losses ``{key: [(step, value)]}`` of one run."""
    rows = read_jsonl(logdir / "metrics.jsonl")
    score = "episode/return" if kind == "reverie" else "episode/score"
    episodes = [(r["step"], r[score]) for r in rows if score in r]
    evals = [(r["step"], r["eval/return"]) for r in rows if "eval/return" in r]
    losses: dict[str, list] = {}
    for ours, theirs in LOSSES.items():
        keys = (ours, ours.replace("loss/rec/", "loss/")) if kind == "reverie" else (theirs,)  # older runs: loss/<key>
        losses[ours] = [(r["step"], r[k]) for r in rows for k in keys if k in r]
    return {"episodes": episodes, "evals": evals, "losses": losses}


def official_runs_of(summary_path: Path, window: int) -> dict[str, dict]:
    """The ``official:*`` runs of a ``summary.json`` this script wrote, windowed as ``window`` asks."""
    saved = json.loads(summary_path.read_text())
    if saved.get("window") != window:
        raise SystemExit(f"{summary_path}: its windows are {saved.get('window')} steps wide, not --window {window}")
    runs = {name: run for name, run in saved["runs"].items() if name.startswith("official:")}
    if not runs:
        raise SystemExit(f"{summary_path}: holds no official run")
    return runs


def windows(points: list[tuple[float, float]], width: int, *, keep_values: bool = True) -> list[dict]:
    """Mean, count and range of the values in each window ``[k·width, (k+1)·width)`` of steps, and the values
    themselves unless ``keep_values`` is False (the comparison needs the episodes', not the losses')."""
    out: dict[int, list[float]] = {}
    for step, value in points:
        out.setdefault(int(step // width), []).append(value)
    return [
        {"from": k * width, "to": (k + 1) * width, "mean": sum(v) / len(v), "n": len(v), "min": min(v), "max": max(v)}
        | ({"values": v} if keep_values else {})
        for k, v in sorted(out.items())
    ]


def mean_difference(ours: list[float], theirs: list[float], *, level: float, draws: int = 10_000, seed: int = 0) -> dict:
    """``mean(ours) − mean(theirs)`` and its two-sided percentile-bootstrap interval at ``level``.

    Episodes are resampled with replacement within each side. Episodes of one
    seed are correlated (one policy's trajectory), which this ignores: the
    interval is narrower than a seed-aware one, so it errs towards finding a
    difference.
    """
    rng = np.random.default_rng(seed)
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    boot = a[rng.integers(0, len(a), (draws, len(a)))].mean(1) - b[rng.integers(0, len(b), (draws, len(b)))].mean(1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return {
        "mean": float(a.mean() - b.mean()),
        "low": float(low),
        "high": float(high),
        "level": level,
        "consistent": bool(low <= 0.0 <= high),
    }


def compare(summary: dict, min_episodes: int) -> dict:
    """Per window, the official range over seeds and whether each reverie seed's mean lies in it.

    Uses the windows in which every run has at least ``min_episodes``
    episodes. ``within`` is None while fewer than two official seeds are
    given (one seed has no range to lie in).
    """
    ours = {name: run for name, run in summary.items() if name.startswith("reverie:")}
    theirs = {name: run for name, run in summary.items() if name.startswith("official:")}

    def means(run: dict) -> dict[int, float]:
        return {w["from"]: w["mean"] for w in run["episodes"] if w["n"] >= min_episodes}

    def pooled(runs: dict, start: int) -> list[float]:
        return [v for run in runs.values() for w in run["episodes"] if w["from"] == start for v in w["values"]]

    ours_means = {name: means(run) for name, run in ours.items()}
    theirs_means = [means(run) for run in theirs.values()]
    starts = set.intersection(*(set(m) for m in [*ours_means.values(), *theirs_means])) if theirs_means else set()
    width = next((w["to"] - w["from"] for run in summary.values() for w in run["episodes"]), 0)
    level = 1.0 - 0.05 / max(1, len(starts))
    rows = []
    for start in sorted(starts):
        low, high = min(m[start] for m in theirs_means), max(m[start] for m in theirs_means)
        inside = {name: low <= m[start] <= high for name, m in ours_means.items()} if len(theirs_means) >= 2 else None
        rows.append(
            {
                "from": start,
                "to": start + width,
                "official_min": low,
                "official_max": high,
                "reverie": {name: m[start] for name, m in ours_means.items()},
                "inside": inside,
                "difference": mean_difference(pooled(ours, start), pooled(theirs, start), level=level, seed=start),
            }
        )
    verdicts = [all(r["inside"].values()) for r in rows if r["inside"] is not None]
    return {
        "official_seeds": len(theirs_means),
        "min_episodes": min_episodes,
        "windows": rows,
        "within": (all(verdicts) if verdicts else None),
        "consistent": (all(r["difference"]["consistent"] for r in rows) if rows else None),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reverie", nargs="+", type=Path, required=True, help="reverie logdirs (one per seed)")
    parser.add_argument("--official", nargs="*", type=Path, default=[], help="official logdirs (one per seed)")
    parser.add_argument(
        "--official-summary", type=Path, help="take the official runs from a summary.json written before (docs/bench/parity_*)"
    )
    parser.add_argument("--window", type=int, default=10_000, help="environment steps per averaging window")
    parser.add_argument("--min-episodes", type=int, default=5, help="windows with fewer episodes in any run are not compared")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = {f"reverie:{p.name}": load(p, "reverie") for p in args.reverie} | {
        f"official:{p.name}": load(p, "official") for p in args.official
    }
    summary = {
        name: {
            "episodes": windows(run["episodes"], args.window),
            "last_step": max((s for s, _ in run["episodes"]), default=0),
            "evals": [{"step": s, "return": v} for s, v in run["evals"]],
            "losses": {k: windows(v, args.window, keep_values=False) for k, v in run["losses"].items() if v},
        }
        for name, run in runs.items()
    }
    if args.official_summary:
        summary |= official_runs_of(args.official_summary, args.window)
    args.out.mkdir(parents=True, exist_ok=True)
    comparison = compare(summary, args.min_episodes)
    (args.out / "summary.json").write_text(json.dumps({"window": args.window, "runs": summary, "comparison": comparison}, indent=1))
    for name, run in summary.items():
        print(
            json.dumps({"run": name, "last_step": run["last_step"], "episodes": [(w["to"], round(w["mean"], 1)) for w in run["episodes"]]})
        )
    print(
        json.dumps(
            {
                "comparison": "within the official range over seeds",
                "within": comparison["within"],
                "no difference beyond the episodes' noise": comparison["consistent"],
                "windows": len(comparison["windows"]),
            }
        )
    )
    plot(runs, summary, args.window, args.out)


def plot(runs: dict, summary: dict, window: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def middles(ws: list[dict]) -> list[float]:
        return [(w["from"] + w["to"]) / 2 for w in ws]

    # Runs taken from a saved summary have no raw points: their window values are drawn at the windows' middles.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, run) in enumerate(summary.items()):
        color = f"C{i}"
        episodes = (
            runs[name]["episodes"]
            if name in runs
            else [(x, v) for w, x in zip(run["episodes"], middles(run["episodes"])) for v in w["values"]]
        )
        steps, values = zip(*episodes) if episodes else ((), ())
        ax.scatter(steps, values, s=6, alpha=0.3, color=color)
        means = run["episodes"]
        ax.plot(middles(means), [w["mean"] for w in means], color=color, label=f"{name} training episodes")
        if run["evals"]:
            ax.plot(
                [e["step"] for e in run["evals"]],
                [e["return"] for e in run["evals"]],
                "s--",
                color=color,
                label=f"{name} eval (deterministic)",
                markersize=4,
            )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "returns.png", dpi=110)
    keys = [k for k in LOSSES if any(run["losses"].get(k) for run in summary.values())]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(12, 2.6 * math.ceil(len(keys) / cols)), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for i, (name, run) in enumerate(summary.items()):
            if name in runs and runs[name]["losses"].get(key):
                ax.plot(*zip(*runs[name]["losses"][key]), color=f"C{i}", label=name, linewidth=1)
            elif run["losses"].get(key):
                ax.plot(middles(run["losses"][key]), [w["mean"] for w in run["losses"][key]], color=f"C{i}", label=name, linewidth=1)
        ax.set_title(key, fontsize=9)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)


if __name__ == "__main__":
    main()
