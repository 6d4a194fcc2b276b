"""Experience streaming throughput over loopback: N actor processes → one learner receiver.

Each actor process streams ``--steps`` transitions in chunks through an
:class:`ExperienceSender` (its own thread and bounded queue, as in an actor);
the receiver validates every message against the replay schema (sizes,
dtypes, shapes, finiteness) and writes it into a ``Replay``, as the learner
does. One JSON line per (observation kind, transport): transitions/s from the
first to the last message received, and the accounting (sent, received,
missing, dropped: lost = sent − received must be 0).

A transition is one replay step of ``dmc/cartpole_swingup`` with the ``1m``
latents (vector: 5 floats; pixels: a 64×64×3 image) plus action, reward,
flags, deter (512 × fp16) and stoch (32 × uint8).

    python bench/streaming.py --actors 4 --steps 40000 --obs vector pixels --transport ipc tcp
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit, machine

from reverie.agent.replay import Replay
from reverie.realtime.channels import ExperienceReceiver, ExperienceSender

DETER, STOCH = 512, 32


def schema(obs: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The replay step of the benchmark."""
    sensors = {"image": ("uint8", (64, 64, 3))} if obs == "pixels" else {"position": ("float32", (3,)), "velocity": ("float32", (2,))}
    return {
        **sensors,
        "reward": ("float32", ()),
        "is_first": ("bool", ()),
        "is_last": ("bool", ()),
        "is_terminal": ("bool", ()),
        "action": ("float32", (1,)),
        "deter": ("float16", (DETER,)),
        "stoch": ("uint8", (STOCH,)),
    }


def _actor(address: str, index: int, obs: str, steps: int, chunk: int, queue_size: int, result: mp.Queue) -> None:
    rng = np.random.default_rng(index)
    arrays = {}
    for key, (dtype, shape) in schema(obs).items():
        if dtype == "uint8":
            arrays[key] = rng.integers(0, 255, (chunk, *shape), dtype=np.uint8)
        elif dtype == "bool":
            arrays[key] = np.zeros((chunk, *shape), bool)
        else:
            arrays[key] = rng.normal(size=(chunk, *shape)).astype(dtype)
    sender = ExperienceSender(address, f"actor{index}", queue_size=queue_size)
    for _ in range(steps // chunk):
        # An actor produces at its tick rate; here the producer waits instead of
        # letting the bounded queue drop (drops would be counted, not hidden).
        while sender.depth >= queue_size - 1:
            time.sleep(0.0005)
        sender.send(arrays, episode=0, policy=0)
    sender.flush(timeout=60.0)
    result.put(sender.stats())
    sender.close(linger=30.0)
    sender.context.term()  # returns once the last messages are out


def measure(obs: str, transport: str, actors: int, steps: int, chunk: int, queue_size: int) -> dict:
    """Streams from ``actors`` processes into one validating receiver + replay."""
    with tempfile.TemporaryDirectory() as tmp:
        address = f"ipc://{tmp}/exp" if transport == "ipc" else "tcp://127.0.0.1:*"
        receiver = ExperienceReceiver(address, schema=schema(obs))
        replay = Replay(capacity=actors * steps + 1, seq_len=65)
        ctx = mp.get_context("spawn")
        results: mp.Queue = ctx.Queue()
        procs = [
            ctx.Process(target=_actor, args=(receiver.address, i, obs, steps, chunk, queue_size, results), daemon=True)
            for i in range(actors)
        ]
        for p in procs:
            p.start()
        expected = actors * (steps // chunk) * chunk
        received, first, last = 0, None, None
        deadline = time.monotonic() + 600
        while received < expected and time.monotonic() < deadline:
            for exp in receiver.receive(timeout=0.1):
                first = first or time.perf_counter()
                replay.extend(exp.arrays)
                received += exp.steps
                last = time.perf_counter()
        stats = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(10)
        accounting = receiver.stats()
        receiver.close()
    sent = sum(s["sent"] for s in stats) * chunk
    missing = sum(a["missing"] for a in accounting["actors"].values()) * chunk
    return {
        "name": "streaming",
        "obs": obs,
        "transport": transport,
        "actors": actors,
        "chunk": chunk,
        "transitions_per_s": received / max(last - first, 1e-9) if first else 0.0,
        "mb_per_s": received * _step_bytes(obs) / max(last - first, 1e-9) / 1e6 if first else 0.0,
        "sent": sent,
        "received": received,
        "missing": missing,
        "dropped": sum(s["dropped"] for s in stats) * chunk,
        "lost": sent - received,
        "refused": sum(accounting["refused"].values()),
        "machine": machine(),
    }


def _step_bytes(obs: str) -> int:
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for dtype, shape in schema(obs).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40_000, help="transitions per actor")
    parser.add_argument("--chunk", type=int, default=64, help="steps per message")
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--obs", nargs="+", default=["vector", "pixels"], choices=["vector", "pixels"])
    parser.add_argument("--transport", nargs="+", default=["ipc", "tcp"], choices=["ipc", "tcp"])
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()
    for obs in args.obs:
        for transport in args.transport:
            steps = args.steps if obs == "vector" else max(args.chunk, args.steps // 8)
            record = measure(obs, transport, args.actors, steps, args.chunk, args.queue_size)
            emit(record)
            if args.out:
                import json

                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
