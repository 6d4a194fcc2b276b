"""Cost of one dream report during training, against the training time between two reports.

Loads a run's checkpoint and replay (as the trainer holds them), then times
:func:`reverie.agent.dream_report.training_report` exactly as ``reverie
train`` calls it (sequence selection, open-loop prediction, drawing, files,
TensorBoard). One JSON line: the first call (matplotlib's imports and font
cache included) and the median of the following ones (wall and CPU
seconds: on a shared machine the wall time includes waiting for a core), and, from the run's
``metrics.jsonl`` (``time/wall_s`` against ``step``), its training seconds
per environment step and the report's share of the training time at
``report_every``.

    python bench/dream_report_cost.py --logdir /work/runs/dream/vector_10k --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import emit, machine

from reverie.agent.dream_report import training_report
from reverie.agent.loading import load_trained
from reverie.agent.replay import Replay
from reverie.configs.schema import Config


def seconds_per_env_step(metrics: Path) -> float | None:
    """Training wall clock per environment step of a run, from its first to its last ``time/wall_s``."""
    if not metrics.exists():
        return None
    points = []
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        if m.get("time/wall_s") is not None:
            points.append((m["step"], m["time/wall_s"]))
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return None
    (s0, w0), (s1, w1) = points[0], points[-1]
    return (w1 - w0) / (s1 - s0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logdir", required=True, help="a run's logdir: checkpoint.pt, config.yaml, replay/ (metrics.jsonl for the share)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-every", type=int, default=Config.report_every, help="environment steps between reports")
    parser.add_argument("--metrics", default=None, help="metrics.jsonl of the run [default: LOGDIR/metrics.jsonl]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logdir = Path(args.logdir)
    agent, cfg, _, _ = load_trained(logdir)
    replay = Replay(
        capacity=cfg.replay.capacity, seq_len=cfg.batch_length + 1, directory=logdir / "replay", chunk_size=cfg.replay.chunk_size
    )
    if not replay.load():
        raise SystemExit(f"no replay in {logdir / 'replay'}")
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        writer = SummaryWriter(str(Path(tmp) / "tb"))
        times, cpu = [], []
        for i in range(args.repeats + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            training_report(
                agent,
                replay,
                context=cfg.get("report_context", 5),
                horizon=cfg.get("report_horizon", 45),
                sequences=cfg.get("report_sequences", 4),
                step=i,
                out_dir=Path(tmp) / "dream" / f"step_{i}",
                writer=writer,
            )
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        writer.close()
    per_step = seconds_per_env_step(Path(args.metrics) if args.metrics else logdir / "metrics.jsonl")
    median = statistics.median(times[1:])
    record = {
        "name": "dream_report_cost",
        "logdir": str(logdir),
        "algo": cfg.algo.name,
        "size": cfg.size.name,
        "env": cfg.env.name,
        "obs": cfg.obs,
        "train_ratio": cfg.train_ratio,
        "threads": args.threads,
        "first_s": round(times[0], 3),
        "median_s": round(median, 3),
        "median_cpu_s": round(statistics.median(cpu[1:]), 3),
        "report_every": args.report_every,
        "train_s_per_env_step": per_step and round(per_step, 5),
        "share_of_training": per_step and round(median / (per_step * args.report_every), 5),
        "machine": machine(),
    }
    emit(record)


if __name__ == "__main__":
    main()
