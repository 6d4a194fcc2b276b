"""Metrics: one JSON object per line in ``metrics.jsonl`` and TensorBoard events."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Writes namespaced scalars with the environment step.

    A resumed run passes ``resume_step``, the step of the checkpoint it
    resumed: lines written after that checkpoint (by the process that died
    or was stopped) are dropped from ``metrics.jsonl``, and TensorBoard purges
    its events past it, because the resumed run logs those steps again.
    Without this a curve read from the file counts them twice.

    Args:
        logdir: output folder.
        tensorboard: also write TensorBoard events (needs the tensorboard package).
        resume_step: the step the run resumed at (None or 0: a new run; nothing is dropped).
    """

    def __init__(self, logdir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        path = self.logdir / "metrics.jsonl"
        if resume_step and path.exists():
            _drop_after(path, int(resume_step))
        self._file = open(path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events at or after it, from before a crash, are discarded.
            purge = int(resume_step) + 1 if resume_step else None
            self._tb = SummaryWriter(str(self.logdir / "tensorboard"), purge_step=purge)

    @property
    def tensorboard(self) -> Any:
        """The TensorBoard ``SummaryWriter`` (for images and videos), or None."""
        return self._tb

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Writes one line ``{"step": step, **metrics}`` (non-finite values become null)."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        """Flushes and closes the outputs."""
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _drop_after(path: Path, step: int) -> None:
    """Rewrites ``path`` without the lines past ``step`` (and without a torn last line); atomic."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = int(json.loads(line)["step"]) <= step
        except (ValueError, KeyError, TypeError):  # a line torn by a kill, or not a metrics line
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All lines of a ``metrics.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curve(metrics_path: str | Path, out_path: str | Path, *, title: str = "", evaluations: str | Path | None = None) -> None:
    """Plots training and evaluation returns against environment steps to a PNG.

    ``evaluations``: a JSONL file of further ``eval/return`` lines (an
    asynchronous run's, made by an evaluator beside the learner); ignored when absent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = read_metrics(metrics_path) if Path(metrics_path).exists() else []
    if evaluations is not None and Path(evaluations).exists():
        lines += read_metrics(evaluations)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles: dict[str, dict[str, Any]] = {
        "episode/return": dict(alpha=0.35, lw=1, label="train episode"),
        "eval/return": dict(marker="o", lw=2, label="eval (deterministic)"),
    }
    for key, style in styles.items():
        points = sorted((m["step"], m[key]) for m in lines if m.get(key) is not None)
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, **style)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right")
    else:  # a run too short for a finished episode still gets its (empty) plot
        ax.text(0.5, 0.5, "no finished episode yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
