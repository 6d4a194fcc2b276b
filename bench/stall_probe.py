"""How long the machine stops a running thread: the floor under any control loop's deadline misses.

One thread reads the monotonic clock in a tight loop for ``--seconds`` and
records every gap between two reads longer than ``--min-gap-ms``. Nothing else
runs in the process, so each gap is time the operating system or the
hypervisor took the core away. A control loop at ``rate`` Hz cannot keep every
deadline on a machine whose stalls exceed its period. Prints one JSON line per
run: the count of gaps above 0.5, 1, 2 and 4 ms, the largest, and how many
exceed the period of 100 and 500 Hz loops.

With ``--build MODEL.onnx`` a second thread builds onnxruntime sessions of that
model (from the file, as the actor does, one every 50 ms) while the first one
spins: the gaps then also show how long a session build holds the
interpreter lock.

    python bench/stall_probe.py --seconds 60 --runs 3
    python bench/stall_probe.py --seconds 2 --build logs/.../policy.onnx
"""

from __future__ import annotations

import argparse
import sys
import threading
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


def build_sessions(path: str, stop: threading.Event, count: list[int], keep: list) -> None:
    """Builds one session of ``path`` every 50 ms until ``stop`` (as the actor's weight thread does).

    Each session is freed right away, unless ``keep`` is given a list to hold them.
    """
    import onnxruntime as ort

    while not stop.is_set():
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if keep is not None:
            keep.append(session)
        del session
        count[0] += 1
        stop.wait(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--min-gap-ms", type=float, default=0.5, help="smallest gap recorded")
    parser.add_argument("--build", default=None, help="an ONNX model to build sessions of beside the probe")
    parser.add_argument("--keep", action="store_true", help="with --build: keep every session alive (separates building from freeing)")
    args = parser.parse_args(argv)
    if args.build:
        import onnxruntime as ort

        ort.InferenceSession(args.build, providers=["CPUExecutionProvider"])  # the first build initialises onnxruntime
        sys.setswitchinterval(0.0002)  # as the actor's loop runs
    for run in range(args.runs):
        stop, builds, kept = threading.Event(), [0], [] if args.keep else None
        builder = threading.Thread(target=build_sessions, args=(args.build, stop, builds, kept)) if args.build else None
        if builder:
            builder.start()
        gaps = probe(args.seconds, args.min_gap_ms / 1e3)
        stop.set()
        if builder:
            builder.join()
        emit(
            {
                "name": "stall_probe",
                "run": run,
                "seconds": args.seconds,
                **{f"gaps_over_{ms:g}ms": sum(g > ms / 1e3 for g in gaps) for ms in (0.5, 1, 2, 4)},
                "max_gap_ms": max(gaps, default=0.0) * 1e3,
                "over_period_500hz": sum(g > 2e-3 for g in gaps),
                "over_period_100hz": sum(g > 10e-3 for g in gaps),
                "build": args.build,
                "sessions_built": builds[0],
                "sessions_kept": bool(args.keep),
                "machine": machine(),
            }
        )


if __name__ == "__main__":
    main()
