"""``reverie run``: a learner and ``realtime.actors`` actors on this machine, supervised.

Each role runs in its own process (``reverie learner`` / ``reverie actor``
with the same overrides), so the control loop never shares an interpreter
lock with training. The launcher shows progress from the learner's
``status.json``, restarts a process that dies (the learner resumes its
checkpoint and replay; an actor rejoins under a new session; an actor that
exited after an emergency stop, status ``EXIT_ESTOP``, is left stopped), and when the
learner has reached ``steps`` stops the actors and gathers the plots:
``curve.png`` (learner) and ``latency.png`` (first actor).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

#: Restarts of one process within ``RESTART_WINDOW_S`` before the launcher
#: gives up (a rare crash in a days-long run is restarted; a crash loop is not).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
#: Niceness added to the learner process.
LEARNER_NICE = 10
#: Exit status of ``reverie actor`` after an emergency stop: the launcher does not restart it (a person decides).
EXIT_ESTOP = 3


class _Process:
    """A supervised child process with its command and log file."""

    def __init__(self, name: str, command: list[str], log: Path, *, nice: int = 0) -> None:
        self.name, self.command, self.log, self.nice = name, command, log, nice
        self.restarts = 0
        self.restart_times: list[float] = []
        self.estopped = False
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.command,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None,
            )

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


def learner_threads(cfg: DictConfig) -> int:
    """Torch threads for the learner: ``threads``, or every core.

    The learner is niced, so an actor takes a core whenever its tick needs
    it; an actor at a control rate leaves most of its core idle, which the
    learner would waste if it kept off that core.
    """
    return int(cfg.threads) if cfg.threads else os.cpu_count() or 1


def launch(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Runs learner and actors until the learner finishes; returns the learner's last status.

    Args:
        cfg: the composed config (for logdir, steps and the process count).
        overrides: the command-line overrides, passed on to each process.

    Raises:
        RuntimeError: when the learner keeps dying.
    """
    logdir = Path(cfg.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "reverie.cli.main"]
    passed = [o for o in overrides if not o.startswith(("threads=", "progress=", "realtime.actor_id="))]
    # The learner runs niced: when the cores are busy the control loops get them first.
    learner = _Process(
        "learner",
        [*base, "learner", *passed, f"threads={learner_threads(cfg)}", "progress=false"],
        logdir / "learner.log",
        nice=LEARNER_NICE,
    )
    actors = [
        _Process(f"actor{i}", [*base, "actor", *passed, f"realtime.actor_id=actor{i}"], logdir / f"actor{i}.log")
        for i in range(int(cfg.realtime.actors))
    ]
    bar = _bar(cfg)
    status: dict[str, Any] = {}
    learner.start()
    for actor in actors:
        actor.start()
    try:
        while True:
            time.sleep(1.0)
            status = _read_status(logdir / "status.json") or status
            if bar is not None and status:
                _show(bar, status)
            code = learner.poll()
            if code == 0:
                break
            if code is not None:
                _restart(learner, f"learner exited with code {code}; see {learner.log}")
            for actor in actors:
                code = actor.poll()
                if code == EXIT_ESTOP:
                    if not actor.estopped:
                        actor.estopped = True
                        print(f"reverie run: {actor.name} was emergency-stopped; it is not restarted (see {actor.log})", file=sys.stderr)
                elif code is not None:
                    _restart(actor, f"{actor.name} exited with code {code}; see {actor.log}")
    except KeyboardInterrupt:
        learner.stop(timeout=120.0)  # lets it checkpoint
    finally:
        for actor in actors:
            actor.stop()
        learner.stop(timeout=120.0)
        if bar is not None:
            bar.close()
    status = _read_status(logdir / "status.json") or status
    latency = logdir / "actors" / "actor0" / "latency.png"
    if latency.exists():
        shutil.copyfile(latency, logdir / "latency.png")
    return status


def _restart(process: _Process, reason: str, now: float | None = None) -> None:
    now = time.monotonic() if now is None else now
    recent = [t for t in process.restart_times if now - t < RESTART_WINDOW_S]
    if len(recent) >= MAX_RESTARTS:
        raise RuntimeError(f"{reason}; gave up after {MAX_RESTARTS} restarts within {RESTART_WINDOW_S:.0f} s")
    print(f"reverie run: {reason}; restarting it", file=sys.stderr)
    process.restarts += 1
    process.restart_times = [*recent, now]
    process.start()


def _read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _bar(cfg: DictConfig):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, unit="step", desc=f"run {cfg.env.name}", dynamic_ncols=True)


def _show(bar: Any, status: dict[str, Any]) -> None:
    actors = list(status.get("actors", {}).values())
    p99 = max((a.get("latency_p99_us") or 0.0 for a in actors), default=0.0)
    misses = sum(a.get("deadline_misses", 0) for a in actors)
    last = status.get("last_return")
    bar.update(max(0, int(status.get("env_steps", 0)) - bar.n))
    bar.set_postfix(
        updates=status.get("updates", 0),
        policy=status.get("policy_version", 0),
        ret="-" if last is None else f"{last:.1f}",
        p99_us=f"{p99:.0f}",
        misses=misses,
    )
