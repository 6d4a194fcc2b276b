"""How long the machine stops a running thread: the floor under any control loop's deadline misses.

One thread reads the monotonic clock in a tight loop for ``--seconds`` and
records every gap between two reads longer than ``--min-gap-ms``. Nothing else
runs in the process, so each gap is time the operating system or the
hypervisor took the core away. A control loop at ``rate`` Hz cannot keep every
deadline on a machine whose stalls exceed its period. Prints one JSON line per
run: the count of gaps above 0.5, 1, 2 and 4 ms, the largest, and how many
exceed the period of 100 and 500 Hz loops.

    python bench/stall_probe.py --seconds 60 --runs 3
"""

from __future__ import annotations

import argparse
import time

from common import emit, machine


def probe(seconds: float, min_gap_s: float) -> list[float]:
    """Gaps (seconds) longer than ``min_gap_s`` between consecutive clock reads over ``seconds``."""
    gaps: list[float] = []
    clock = time.perf_counter
    end = clock() + seconds
    last = clock()
    while last < end:
        now = clock()
        if now - last > min_gap_s:
            gaps.append(now - last)
        last = now
    return gaps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--min-gap-ms", type=float, default=0.5, help="smallest gap recorded")
    args = parser.parse_args(argv)
    for run in range(args.runs):
        gaps = probe(args.seconds, args.min_gap_ms / 1e3)
        emit(
            {
                "name": "stall_probe",
                "run": run,
                "seconds": args.seconds,
                **{f"gaps_over_{ms:g}ms": sum(g > ms / 1e3 for g in gaps) for ms in (0.5, 1, 2, 4)},
                "max_gap_ms": max(gaps, default=0.0) * 1e3,
                "over_period_500hz": sum(g > 2e-3 for g in gaps),
                "over_period_100hz": sum(g > 10e-3 for g in gaps),
                "machine": machine(),
            }
        )


if __name__ == "__main__":
    main()
