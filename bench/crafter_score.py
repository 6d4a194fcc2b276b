"""Crafter score from episode logs: the geometric mean of achievement success rates.

Hafner 2021 ("Benchmarking the Spectrum of Agent Capabilities"): with s_i the
success rate of achievement i in percent (the share of episodes that unlocked
it at least once), over the 22 achievements,

    score = exp(mean_i ln(1 + s_i)) - 1        (in percent, 0 to 100)

Reads JSON-lines files of finished episodes. A line counts as an episode when
it has ``<prefix>achievement_<name>`` keys (unlock counts); the prefix is found
per file: none in a ``stats.jsonl`` (crafter's ``Recorder`` and
``envs.make("crafter/reward", stats_file=...)`` write that), ``episode/`` in a
trainer ``metrics.jsonl`` (once the trainer writes the ``log/achievement_<name>``
values of each episode's last observation as ``episode/achievement_<name>``).
A folder argument means its ``stats.jsonl``, else its ``metrics.jsonl``.

    python bench/crafter_score.py logs/crafter-seed0 logs/crafter-seed1 --steps 1000000

Prints one JSON line per file and, for several files, one with the mean and
standard deviation of their scores and the score of all episodes pooled.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

#: The 22 Crafter achievements (crafter.constants.achievements, crafter 1.8.3).
ACHIEVEMENTS = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)
#: Key prefixes tried, in order, when a file does not say.
PREFIXES = ("", "episode/")
_KEY = re.compile(r"^(.*?)achievement_([a-z_]+)$")


def crafter_score(success_rates: Iterable[float]) -> float:
    """``exp(mean(ln(1 + s))) - 1`` of success rates ``s`` in percent."""
    rates = [float(s) for s in success_rates]
    if not rates:
        raise ValueError("no success rates")
    if any(not 0.0 <= s <= 100.0 for s in rates):
        raise ValueError(f"success rates must be percentages in [0, 100], got {rates}")
    return math.exp(sum(math.log1p(s) for s in rates) / len(rates)) - 1.0


def success_rates(episodes: list[dict[str, int]]) -> dict[str, float]:
    """Percent of ``episodes`` (dicts of unlock counts by name) that unlocked each achievement."""
    if not episodes:
        raise ValueError("no episodes")
    return {name: 100.0 * sum(1 for ep in episodes if ep.get(name, 0) >= 1) / len(episodes) for name in ACHIEVEMENTS}


def read_episodes(path: str | Path, prefix: str | None = None, steps: float | None = None) -> list[dict[str, int]]:
    """The episodes of one JSONL file, as dicts of unlock counts by achievement name.

    Args:
        path: a JSONL file, or a folder with ``stats.jsonl`` or ``metrics.jsonl``.
        prefix: the key prefix before ``achievement_``; None finds it.
        steps: keep the episodes that ended within this many environment
            steps (a line's ``step``, else the running sum of ``length``).

    Raises:
        ValueError: when the file has no episode with achievements.
    """
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("stats.jsonl", "metrics.jsonl") if (path / n).exists()), path / "stats.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if prefix is None:
        found = {m.group(1) for line in lines for key in line if (m := _KEY.match(key)) and m.group(2) in ACHIEVEMENTS}
        prefix = next((p for p in PREFIXES if p in found), None)
        if prefix is None:
            if not found:
                raise ValueError(f"{path}: no achievement_<name> keys (is it a crafter run?)")
            prefix = sorted(found)[0]
    episodes: list[dict[str, int]] = []
    total = 0
    for line in lines:
        counts = {name: line[f"{prefix}achievement_{name}"] for name in ACHIEVEMENTS if line.get(f"{prefix}achievement_{name}") is not None}
        if not counts:
            continue
        total += int(line.get("length") or 0)
        step = line.get("step", total)
        if steps is not None and step > steps:
            break
        episodes.append({k: int(v) for k, v in counts.items()})
    if not episodes:
        raise ValueError(f"{path}: no episodes with {prefix}achievement_<name> keys" + (f" within {steps:g} steps" if steps else ""))
    return episodes


def summarize(episodes: list[dict[str, int]]) -> dict:
    """Score, episode count and per-achievement success rates (percent)."""
    rates = success_rates(episodes)
    return {"score": crafter_score(rates.values()), "episodes": len(episodes), "success_rates": rates}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="JSONL files or run folders (one per seed)")
    parser.add_argument("--prefix", default=None, help="key prefix before achievement_ (default: found per file)")
    parser.add_argument("--steps", type=float, default=None, help="only episodes that ended within this many env steps (1e6 in the paper)")
    args = parser.parse_args(argv)
    runs = [read_episodes(p, args.prefix, args.steps) for p in args.paths]
    scores = []
    for path, episodes in zip(args.paths, runs):
        row = {"file": str(path), **summarize(episodes)}
        scores.append(row["score"])
        print(json.dumps(row), flush=True)
    if len(runs) > 1:
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        pooled = summarize([ep for run in runs for ep in run])
        print(
            json.dumps(
                {"runs": len(runs), "score_mean": mean, "score_std": std, "score_pooled": pooled["score"], "episodes": pooled["episodes"]}
            )
        )


if __name__ == "__main__":
    main()
