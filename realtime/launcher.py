"""``reverie run``: a learner and ``realtime.actors`` actors on this machine, supervised.

Each role runs in its own process (``reverie learner`` / ``reverie actor``
with the same overrides), so the control loop never shares an interpreter
lock with training. The launcher shows progress from the learner's
``status.json``, restarts a process that dies (the learner resumes its
checkpoint and replay; an actor rejoins under a new session; an actor that
exited after an emergency stop, status ``EXIT_ESTOP``, is left stopped), and when the
learner has reached ``steps`` stops the actors and gathers the plots:
``curve.png`` (learner) and ``latency.png`` (first actor).

Evaluation happens here, not in the learner (which has no environment): the
learner writes the deterministic policy every ``eval_every`` environment
steps (``eval/policy_<env steps>.onnx``), and the launcher runs each in the
control loop next to a fresh environment (``reverie eval``, the robot-side
code, at ``realtime.rate_hz``), one at a time, the newest first. Results go to
``eval.jsonl`` and into ``curve.png``; the last one, of the final policy, is
made after the learner has finished.
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
#: Seed offset of evaluation episodes (as in ``reverie train``'s evaluation env).
EVAL_SEED = 1_000_000


def lower_process_priority(niceness: int) -> None:
    """Adds ``niceness`` to this process and sets its session's scheduling group to the same nice value.

    Meant for a child started in a session of its own (``start_new_session``),
    as ``preexec_fn``. Where Linux schedules by autogroup (the default where it
    is built in: ``/proc/sys/kernel/sched_autogroup_enabled``), every session
    is a group of its own, and CPU time is shared equally between groups;
    a process's nice value only weighs against the processes of its own
    group. A learner niced alone therefore took as much of a busy core as an
    actor did (measured in session 13: a nice-10 busy loop in its own session
    ran 0.98× as often as a nice-0 one on the same core, 0.16× with its group
    niced too). The group's nice value is set through ``/proc/self/autogroup``;
    without autogroups (another kernel or OS) the process nice alone does the job.
    """
    os.nice(niceness)
    try:
        with open("/proc/self/autogroup", "w") as group:
            group.write(str(niceness))
    except OSError:
        pass


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
                preexec_fn=(lambda: lower_process_priority(self.nice)) if self.nice else None,
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


class Evaluations:
    """Evaluates the deterministic policies the learner writes to ``logdir/eval/``, one process at a time.

    Each is run by ``reverie eval`` (episodes in the fixed-rate control loop
    with onnxruntime, in the environment the run's sidecar describes); its
    mean return is appended to ``logdir/eval.jsonl`` as ``eval/return`` at the
    policy's environment step (with ``time/wall_s``, the learner's wall clock
    when it wrote the policy). While one runs, newer policies wait and older
    waiting ones are dropped (the curve gets the newest points, not a backlog).
    """

    def __init__(self, cfg: DictConfig, logdir: Path, command: list[str]) -> None:
        self.cfg, self.logdir, self.command = cfg, logdir, command
        self.folder = logdir / "eval"
        self.running: tuple[_Process, Path, int] | None = None
        self.results: list[dict[str, Any]] = []
        self.failures = 0

    def _pending(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.glob("policy_*.onnx"):
            step = path.stem.split("_", 1)[1]
            if step.isdigit() and not path.name.endswith(".advance.onnx"):
                found.append((int(step), path))
        return sorted(found)

    def poll(self) -> None:
        """Collects a finished evaluation and starts the next one (call every second or so)."""
        if self.running is not None:
            process, policy, step = self.running
            code = process.poll()
            if code is None:
                return
            self._collect(code, policy, step)
        pending = self._pending()
        if not pending:
            return
        *older, (step, policy) = pending
        for _, old in older:
            _remove_policy(old)
        out = self.folder / f"step_{step:010d}"
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        args = [
            str(policy),
            f"episodes={int(cfg.eval_episodes)}",
            f"rate_hz={cfg.realtime.rate_hz}",
            f"seed={int(cfg.seed) + EVAL_SEED + step}",
            f"robot={'true' if cfg.realtime.robot else 'false'}",
            f"out={out}",
        ]
        process = _Process(f"eval {step}", [*self.command, "eval", *args], out / "eval.log")
        process.start()
        self.running = (process, policy, step)

    def _collect(self, code: int, policy: Path, step: int) -> None:
        self.running = None
        report = self.folder / f"step_{step:010d}" / "eval.json"
        result = _read_status(report) if code == 0 else None
        if result is None or result.get("return_mean") is None:
            self.failures += 1
            print(f"reverie run: evaluating {policy.name} failed (exit {code}); see {report.with_name('eval.log')}", file=sys.stderr)
        else:
            line = {"step": step, "eval/return": result["return_mean"], "eval/return_std": result["return_std"]}
            wall_s = (_read_status(policy.with_name(f"{policy.name}.json")) or {}).get("wall_s")
            if wall_s is not None:  # the learner's wall clock when it wrote the policy: the curve against minutes
                line["time/wall_s"] = wall_s
            self.results.append(line)
            with open(self.logdir / "eval.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
        _remove_policy(policy)

    def finish(self, timeout: float = 600.0) -> None:
        """Waits for the running evaluation and makes the last one (the final policy's)."""
        deadline = time.monotonic() + timeout
        while (self.running is not None or self._pending()) and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.2)
        if self.running is not None:
            self.running[0].stop()
            self.poll()

    def stop(self) -> None:
        """Ends a running evaluation (the launcher is interrupted)."""
        if self.running is not None:
            self.running[0].stop()
            self.running = None


def _remove_policy(path: Path) -> None:
    for part in (path, path.with_name(f"{path.stem}.advance.onnx"), path.with_name(f"{path.name}.json")):
        part.unlink(missing_ok=True)


def learner_threads(cfg: DictConfig) -> int:
    """Torch threads for the learner: ``threads``, or the cores the local actors leave (at least one).

    The learner is niced, so an actor takes a core whenever its tick needs
    it. Giving the learner that core too was slower, measured on 2 cores with
    one 50 Hz actor (docs/benchmarks.md, "The learner's threads"): 0.78 and
    0.85 updates/s with 2 threads against 1.13 and 1.01 with 1. Its threads
    wait for one another at every product whenever the actor, or an
    evaluation, holds a core, and the `1m` products are too small for a second
    thread to pay for that.
    """
    if cfg.threads:
        return int(cfg.threads)
    return max(1, (os.cpu_count() or 1) - int(cfg.realtime.actors))


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
    evaluations = Evaluations(cfg, logdir, base) if cfg.eval_episodes else None
    bar = _bar(cfg)
    status: dict[str, Any] = {}
    finished = False
    learner.start()
    for actor in actors:
        actor.start()
    try:
        while True:
            time.sleep(1.0)
            status = _read_status(logdir / "status.json") or status
            if evaluations is not None:
                evaluations.poll()
            if bar is not None and status:
                _show(bar, status, evaluations.results[-1] if evaluations is not None and evaluations.results else None)
            code = learner.poll()
            if code == 0:
                finished = True
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
        if not finished:
            if evaluations is not None:
                evaluations.stop()
            if bar is not None:
                bar.close()
    if evaluations is not None and finished:
        evaluations.finish()  # the final policy's evaluation, with the cores free of actors and learner
        from reverie.agent.logger import plot_curve

        # The learner drew curve.png without the evaluations; draw it again with them (as realtime.outputs.plot does).
        title = f"{cfg.algo.name} {cfg.size.name} {cfg.env.name} (async)"
        plot_curve(logdir / "metrics.jsonl", logdir / "curve.png", title=title, evaluations=logdir / "eval.jsonl")
    if bar is not None and finished:
        if evaluations is not None and evaluations.results:
            bar.set_postfix(eval=f"{evaluations.results[-1]['eval/return']:.1f}")
        bar.close()
    status = _read_status(logdir / "status.json") or status
    if evaluations is not None and evaluations.results:
        status["eval_return"] = evaluations.results[-1]["eval/return"]
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


def _bar(cfg: DictConfig) -> Any:  # a tqdm bar (untyped), or None
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, unit="step", desc=f"run {cfg.env.name}", dynamic_ncols=True)


def _show(bar: Any, status: dict[str, Any], evaluation: dict[str, Any] | None = None) -> None:
    actors = list(status.get("actors", {}).values())
    p99 = max((a.get("latency_p99_us") or 0.0 for a in actors), default=0.0)
    misses = sum(a.get("deadline_misses", 0) for a in actors)
    last = status.get("last_return")
    bar.update(max(0, int(status.get("env_steps", 0)) - bar.n))
    bar.set_postfix(
        updates=status.get("updates", 0),
        policy=status.get("policy_version", 0),
        ret="-" if last is None else f"{last:.1f}",
        eval="-" if evaluation is None else f"{evaluation['eval/return']:.1f}",
        p99_us=f"{p99:.0f}",
        misses=misses,
    )
