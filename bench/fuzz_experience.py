"""Mutation fuzzing of a live ``reverie learner``: every message is refused or stored valid, and training goes on.

Starts ``reverie learner`` (tcp on loopback, no CURVE: the case where anyone can
send anything), streams valid experience from one honest actor, and between
its messages sends mutations of valid messages: bit flips in the header and
in the payload, truncated, dropped and extra frames, edited shapes, dtypes,
keys and header numbers, and single values outside their meaning (class
indices, flag bytes, actions beyond their bounds, huge or non-finite values).
At the end it stops the learner (which checkpoints) and runs
``reverie replay check`` on its replay. Prints one JSON line:
sent = refused + accepted, refusals by reason, the learner's updates during
the fuzz, the invalid rows found in replay afterwards, and whether the
learner was still running.

    python bench/fuzz_experience.py --messages 10000 --out docs/bench/fuzz_experience.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from reverie.realtime.protocol import DTYPES, encode_experience
from reverie.realtime.status import query_status

#: A learner small enough to train at once on a CPU; the fuzz is about its door, not its model.
TINY = [
    "env=fake/vector",
    "size.deter=32",
    "size.hidden=16",
    "size.classes=4",
    "size.units=16",
    "size.depth=2",
    "algo.rssm.stoch=4",
    "algo.rssm.blocks=4",
    "algo.imag_horizon=5",
    "batch_size=4",
    "batch_length=8",
    "train_start=16",
    "train_ratio=64",
    "compile=false",
    "threads=1",
    "eval_episodes=0",
    "steps=100000000",
    "realtime.publish_every=1000000",
]
#: One replay step of that learner: {key: (dtype, shape)} (fake/vector, deter 32, 4 latents of 4 classes).
SCHEMA = {
    "target": ("float32", (3,)),
    "prev_action": ("float32", (3,)),
    "progress": ("float32", (1,)),
    "reward": ("float32", ()),
    "is_first": ("bool", ()),
    "is_last": ("bool", ()),
    "is_terminal": ("bool", ()),
    "action": ("float32", (3,)),
    "deter": ("float16", (32,)),
    "stoch": ("uint8", (4,)),
}
CHUNK = 16


def valid_chunk(rng: np.random.Generator, first: bool) -> dict[str, np.ndarray]:
    """A chunk that passes every check."""
    arrays = {}
    for key, (dtype, shape) in SCHEMA.items():
        if dtype == "bool":
            arrays[key] = np.zeros((CHUNK, *shape), bool)
        elif key == "stoch":
            arrays[key] = rng.integers(0, 4, (CHUNK, *shape)).astype(np.uint8)
        else:
            arrays[key] = rng.uniform(-1, 1, (CHUNK, *shape)).astype(dtype)
    arrays["is_first"][0] = first
    return arrays


def _flip(data: bytes, rng: np.random.Generator, bits: int) -> bytes:
    out = bytearray(data)
    for _ in range(bits):
        if out:
            i = int(rng.integers(len(out)))
            out[i] ^= 1 << int(rng.integers(8))
    return bytes(out)


def mutate(frames: list[bytes], arrays: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[str, list[bytes]]:
    """One mutation of a valid message: ``(kind, frames)``."""
    kind = str(rng.choice(["header_bits", "payload_bits", "truncate", "frames", "header_edit", "value"]))
    frames = list(frames)
    if kind == "header_bits":
        frames[0] = _flip(frames[0], rng, int(rng.integers(1, 9)))
    elif kind == "payload_bits":
        i = int(rng.integers(1, len(frames)))
        frames[i] = _flip(frames[i], rng, int(rng.integers(1, 33)))
    elif kind == "truncate":
        i = int(rng.integers(len(frames)))
        frames[i] = frames[i][: int(rng.integers(len(frames[i]) + 1))]
    elif kind == "frames":
        if rng.random() < 0.5:
            del frames[int(rng.integers(len(frames)))]
        else:
            frames.insert(int(rng.integers(len(frames) + 1)), rng.bytes(int(rng.integers(0, 64))))
    elif kind == "header_edit":
        header = msgpack.unpackb(frames[0])
        field = str(rng.choice(["shapes", "dtypes", "keys", "seq", "session", "episode", "policy", "actor", "v", "kind"]))
        n = len(header["keys"])
        if field == "shapes":
            header["shapes"][int(rng.integers(n))] = [int(rng.integers(0, 70)) for _ in range(int(rng.integers(0, 4)))]
        elif field == "dtypes":
            header["dtypes"][int(rng.integers(n))] = str(rng.choice(sorted(DTYPES)))
        elif field == "keys":
            header["keys"][int(rng.integers(n))] = str(rng.choice(["x", "action", "reward", "deter"]))
        elif field in ("seq", "session", "episode", "policy"):
            header[field] = int(rng.choice([0, 1, 2**31, 2**62, 2**64 - 1, -1, int(rng.integers(0, 10**6))]))
        elif field == "actor":
            header["actor"] = str(rng.choice(["", "a" * 200, f"flood-{int(rng.integers(10**9))}", "honest"]))
        else:
            header[field] = [0, 2, "exp", "weights", None][int(rng.integers(5))] if field == "v" else "weights"
        try:
            frames[0] = msgpack.packb(header)
        except (OverflowError, ValueError):  # 2**64 does not pack signed: send the raw edit instead
            frames[0] = _flip(frames[0], rng, 1)
    else:  # one value outside its meaning
        arrays = {k: v.copy() for k, v in arrays.items()}
        key = str(rng.choice(list(arrays)))
        flat, row = arrays[key].reshape(CHUNK, -1), int(rng.integers(CHUNK))
        col = int(rng.integers(flat.shape[1]))
        if flat.dtype == bool:
            flat.view(np.uint8)[row, col] = int(rng.integers(2, 256))
        elif flat.dtype == np.uint8:
            flat[row, col] = int(rng.integers(4, 256))
        else:
            bad = [np.nan, np.inf, -np.inf, 1e37, -3.4e38, 1.0001, -1.0001, 2e6]
            flat[row, col] = bad[int(rng.integers(len(bad)))] if flat.dtype != np.float16 else np.float16(np.inf)
        header = msgpack.unpackb(frames[0])
        frames = encode_experience(
            actor=header["actor"], episode=header["episode"], seq=header["seq"], policy=0, arrays=arrays, session=header["session"]
        )
        frames = [bytes(f) for f in frames]
    return kind, frames


def free_port() -> int:
    """A port whose next two are free too (the learner binds three)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            return port
    raise RuntimeError("no free port")


def fuzz(messages: int, seed: int, logdir: Path, timeout_s: float = 600.0) -> dict:
    """Runs the fuzz against a learner subprocess; returns the summary."""
    port = free_port()
    overrides = [
        *TINY,
        f"logdir={logdir}",
        "realtime.transport=tcp",
        "realtime.bind=127.0.0.1",
        f"realtime.port={port}",
        "realtime.insecure=true",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(logdir.parent / "learner.log", "w")
    learner = subprocess.Popen(
        [sys.executable, "-m", "reverie.cli.main", "learner", *overrides], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    status_address = f"tcp://127.0.0.1:{port + 2}"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.connect(f"tcp://127.0.0.1:{port}")
    rng = np.random.default_rng(seed)
    start = time.monotonic()
    try:
        status = _wait_status(status_address, learner, 120.0)
        kinds: dict[str, int] = {}
        honest_seq = fuzz_seq = episode = 0
        sent = 0
        updates_before = None
        for i in range(messages):
            if i % 10 == 0:  # an honest actor's stream, throughout
                arrays = valid_chunk(rng, first=honest_seq == 0)
                push.send_multipart(encode_experience(actor="honest", episode=0, seq=honest_seq, policy=0, arrays=arrays, session=1))
                honest_seq += 1
                sent += 1
                if updates_before is None and honest_seq == 3:
                    updates_before = _wait_updates(status_address, learner)
            arrays = valid_chunk(rng, first=True)
            frames = [bytes(f) for f in encode_experience(actor="fuzz", episode=episode, seq=fuzz_seq, policy=0, arrays=arrays, session=7)]
            fuzz_seq += 1
            episode += 1
            kind, frames = mutate(frames, arrays, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            push.send_multipart(frames)
            sent += 1
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"fuzz took over {timeout_s} s")
        deadline = time.monotonic() + 120
        while True:
            status = _status(status_address)
            accepted = sum(a["messages"] for a in status["received"].values()) + status["retired_actors"].get("messages", 0)
            refused = sum(status["refused"].values())
            if accepted + refused >= sent or time.monotonic() > deadline or learner.poll() is not None:
                break
            time.sleep(0.5)
        alive = learner.poll() is None
        updates_after = status["updates"]
    finally:
        push.close(0)
        ctx.term()
        if learner.poll() is None:
            learner.send_signal(signal.SIGINT)  # checkpoints on the way out
            learner.wait(120)
    check = subprocess.run(
        [sys.executable, "-m", "reverie.cli.main", "replay", "check", str(logdir)], capture_output=True, text=True, env=env, timeout=300
    )
    report = json.loads(check.stdout) if check.stdout.strip().startswith("{") else {"error": check.stderr[-500:]}
    return {
        "bench": "fuzz_experience",
        "sent": sent,
        "accepted": accepted,
        "refused": refused,
        "accounted": accepted + refused == sent,
        "refused_by_reason": status["refused"],
        "mutations_by_kind": kinds,
        "honest_messages_accepted": status["received"].get("honest", {}).get("messages", 0),
        "honest_messages_sent": honest_seq,
        "honest_id_refused": status["received"].get("honest", {}).get("refused", {}),
        "updates_during_fuzz": updates_after - (updates_before or 0),
        "learner_alive_after_fuzz": alive,
        "learner_exit_code": learner.returncode,
        "replay_rows": report.get("rows"),
        "replay_invalid_rows": report.get("invalid"),
        "seconds": round(time.monotonic() - start, 1),
        "seed": seed,
    }


def _status(address: str, attempts: int = 6) -> dict:
    """The learner's status; a busy learner (or machine) may take a while to answer."""
    for attempt in range(attempts):
        try:
            return query_status(address, timeout_s=10.0)
        except TimeoutError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _wait_status(address: str, learner: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if learner.poll() is not None:
            raise RuntimeError(f"the learner exited with {learner.returncode} before answering")
        try:
            return query_status(address, timeout_s=1.0)
        except TimeoutError:
            pass
    raise TimeoutError(f"no learner status at {address} within {timeout} s")


def _wait_updates(address: str, learner: subprocess.Popen, timeout: float = 120.0) -> int:
    """Waits until the learner has trained at least once; returns its update count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and learner.poll() is None:
        status = _status(address)
        if status.get("updates", 0) > 0:
            return status["updates"]
        time.sleep(0.2)
    raise TimeoutError("the learner did not start training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000, help="mutated messages to send")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="append the JSON line to this file too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        summary = fuzz(args.messages, args.seed, Path(tmp) / "run")
    line = json.dumps(summary)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
