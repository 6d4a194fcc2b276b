"""Sim to real on the MuJoCo stand-in: the reality gap, and the deployed agent learning it away.

Given a ``reverie train`` run (the simulation), on a copy of it:

1. **gap**: the run's deterministic policy on the simulator (nominal physics,
   no clock) and on the perturbed stand-in robot (``realtime.robot_perturb``,
   paced in wall-clock time at ``--rate-hz``), ``--episodes`` each; with
   ``--randomized RUN`` the same for a policy trained with ``env.randomize``.
2. **flow** (``--minutes`` > 0): ``reverie learner`` resumes the copy's
   checkpoint and replay, ``reverie actor realtime.robot=true`` drives the
   perturbed robot starting with the simulation's policy
   (``realtime.initial_policy``), streams its experience and swaps in each
   version the learner publishes. The actor's status is sampled every
   second; every finished robot episode becomes a line of ``flow.jsonl``
   (minutes since deployment, return, policy version). With ``--control``
   the same flow runs again from a fresh copy on the *unperturbed* stand-in
   (``control/flow.jsonl``): a policy that is still improving rises on any
   robot, and ``recovered_beyond_control`` is the part of the gap recovered
   in excess of that rise.
3. **plot**: ``sim_to_real.png``, return against wall-clock minutes on the
   robot, deployment at 0, with the simulator's return and the robot's
   return at deployment as reference lines; ``summary.json`` and one JSON
   line on stdout with the gap and the part of it recovered.

The learner and the actor are the real CLIs, run as subprocesses with the
simulation run's own config (``config.yaml``) as overrides; the learner with
nice 10, as ``reverie run`` does. The simulation run is only read (copied).

    python bench/sim_to_real.py --sim /path/to/run --out /work/scratch/s2r/bench --minutes 20
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import emit, machine
from omegaconf import OmegaConf

#: The stand-in robot's difference from the simulator (``realtime.robot_perturb``), as overrides.
DEFAULT_PERTURB = ["mass=[1.5,1.5]", "gain=[0.75,0.75]", "damping=[3.0,3.0]", "obs_noise=0.01"]
#: Keys set by the flow itself (never copied from the simulation run's config).
OWN_KEYS = ("logdir", "steps", "realtime", "progress", "report_every", "eval_every", "eval_episodes", "checkpoint_every")


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(value)


def run_overrides(config_yaml: Path) -> list[str]:
    """Overrides that compose exactly the config a run saved (``env=<name>``, then every leaf that differs)."""
    from reverie.cli.config import compose

    saved = OmegaConf.to_container(OmegaConf.load(config_yaml), resolve=True)
    env = saved["env"]["name"]
    base = _leaves(OmegaConf.to_container(compose([f"env={env}"]), resolve=True))
    overrides = [f"env={env}"]
    for key, value in _leaves(saved).items():
        if key.split(".")[0] in OWN_KEYS:
            continue
        if key not in base:
            overrides.append(f"+{key}={_value(value)}")
        elif base[key] != value:
            overrides.append(f"{key}={_value(value)}")
    return overrides


def copy_run(sim: Path, target: Path) -> Path:
    """Copies a run (checkpoint, replay, config, policy) without its reports; exports the policy if missing."""
    if target.exists():
        raise SystemExit(f"{target} exists; pass another --out")
    shutil.copytree(sim, target, ignore=shutil.ignore_patterns("tensorboard", "dream", "actors", "published", "status.json"))
    if not (target / "policy.onnx").exists():
        subprocess.run(
            [sys.executable, "-m", "reverie.cli.main", "export", str(target), "-o", str(target / "policy.onnx"), "--deterministic"],
            check=True,
        )
    return target


def perturb_spec(perturb: list[str]) -> Any:
    from reverie.envs.randomize import RandomizeSpec

    values = {}
    for item in perturb:
        key, _, value = item.partition("=")
        values[key] = json.loads(value)
    return RandomizeSpec(**values)


def on_simulator(policy: Path, episodes: int, seed: int, perturb: Any = None) -> list[float]:
    """Returns of the policy on the simulator (stepped as fast as it goes: no clock, no latency).

    ``perturb``: a ``RandomizeSpec`` applied to it (fixed ranges: the same
    model changes, noise and delay as the stand-in robot's); None: nominal.
    """
    from reverie import envs
    from reverie.realtime.runtime import PolicyRuntime

    runtime = PolicyRuntime(policy, threads=1, seed=seed)
    env = envs.make(runtime.meta["env"], obs=runtime.meta.get("obs", "vector"), seed=seed, randomize=perturb)
    returns = []
    for episode in range(episodes):
        obs = env.reset(seed=seed + episode)
        runtime.reset()
        total = 0.0
        while not obs["is_last"]:
            action = runtime.step(obs)
            runtime.action_sent(action)
            obs = env.step(action)
            total += float(obs["reward"])
        returns.append(total)
    env.close()
    return returns


def on_robot(policy: Path, episodes: int, seed: int, rate_hz: float, perturb: Any) -> list[float]:
    """Returns of the policy on the stand-in robot in wall-clock time (``perturb`` None: the nominal robot)."""
    from reverie.envs.robot import MuJoCoRobot
    from reverie.realtime.loop import ControlLoop, default_spin_s
    from reverie.realtime.runtime import PolicyRuntime

    runtime = PolicyRuntime(policy, threads=1, seed=seed)
    robot = MuJoCoRobot(runtime.meta["env"], obs=runtime.meta.get("obs", "vector"), seed=seed, perturb=perturb)
    loop = ControlLoop(robot, runtime, rate_hz=rate_hz, spin_s=default_spin_s(rate_hz))
    stats = loop.run(episodes=episodes)
    robot.close()
    return list(stats.episode_returns)


def gap(name: str, policy: Path, args: argparse.Namespace, perturb: Any) -> dict[str, Any]:
    sim = on_simulator(policy, args.episodes, args.seed)
    robot = on_robot(policy, args.episodes, args.seed, args.rate_hz, perturb)
    row = {
        "policy": name,
        "simulator": float(np.mean(sim)),
        "simulator_std": float(np.std(sim)),
        "robot": float(np.mean(robot)),
        "robot_std": float(np.std(robot)),
        "gap": float(np.mean(sim) - np.mean(robot)),
        "episodes": args.episodes,
    }
    if args.nominal_robot:
        nominal = on_robot(policy, args.episodes, args.seed, args.rate_hz, None)
        row["nominal_robot"] = float(np.mean(nominal))
    return row


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def flow(deploy: Path, args: argparse.Namespace, out: Path, perturb: list[str]) -> list[dict[str, Any]]:
    """Learner and actor as subprocesses for ``args.minutes`` on the stand-in with ``perturb``; one record per robot episode."""
    common = [
        *run_overrides(deploy / "config.yaml"),
        f"logdir={deploy}",
        "steps=1000000000",
        f"realtime.ipc_dir={out / 'ipc'}",
        f"realtime.rate_hz={args.rate_hz}",
        f"realtime.publish_every={args.publish_every}",
        "report_every=0",
        "eval_episodes=0",
        "progress=false",
        *args.override,
    ]
    actor_args = [
        *common,
        "realtime.robot=true",
        f"realtime.initial_policy={deploy / 'policy.onnx'}",
        *(f"realtime.robot_perturb.{p}" for p in perturb),
    ]
    from reverie.realtime.launcher import lower_process_priority

    cli = [sys.executable, "-m", "reverie.cli.main"]
    (out / "commands.txt").write_text("reverie learner " + " ".join(common) + "\nreverie actor " + " ".join(actor_args) + "\n")
    logs = open(out / "flow.log", "ab")
    learner = subprocess.Popen(
        [*cli, "learner", *common],
        stdout=logs,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: lower_process_priority(10),
    )
    status_path = deploy / "actors" / "actor0" / "status.json"
    records: list[dict[str, Any]] = []
    actor = None
    try:
        # The learner loads the run (replay included) before it listens; the actor starts once it publishes.
        deadline = time.monotonic() + 600
        while _json(deploy / "status.json").get("policy_version", 0) < 1 and time.monotonic() < deadline:
            if learner.poll() is not None:
                raise SystemExit(f"the learner exited with {learner.returncode}; see {out / 'flow.log'}")
            time.sleep(1.0)
        actor = subprocess.Popen([*cli, "actor", *actor_args], stdout=logs, stderr=subprocess.STDOUT, start_new_session=True)
        start = None
        seen = 0
        with open(out / "flow.jsonl", "w") as lines:
            while True:
                time.sleep(1.0)
                status = _json(status_path)
                if status and start is None:
                    start = time.monotonic() - 1.0  # the actor's first report comes within a second of its first tick
                if start is None:
                    if actor.poll() is not None:
                        raise SystemExit(f"the actor exited with {actor.returncode}; see {out / 'flow.log'}")
                    continue
                minutes = (time.monotonic() - start) / 60
                if status.get("episodes", 0) > seen and status.get("last_return") is not None:
                    seen = status["episodes"]
                    learner_status = _json(deploy / "status.json")
                    record = {
                        "minutes": minutes,
                        "episode": seen,
                        "return": status["last_return"],
                        "policy_version": status.get("policy_version"),
                        "updates": learner_status.get("updates"),
                        "deadline_misses": status.get("deadline_misses"),
                    }
                    records.append(record)
                    lines.write(json.dumps(record) + "\n")
                    lines.flush()
                if minutes >= args.minutes or actor.poll() is not None:
                    break
    finally:
        for proc in (actor, learner):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, limit in ((actor, 60), (learner, 300)):
            if proc is not None:
                try:
                    proc.wait(limit)
                except subprocess.TimeoutExpired:
                    proc.kill()
        logs.close()
    return records


def plot(records: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path, window: int, control: list[dict[str, Any]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for curve, color, name in ((records, "tab:blue", "perturbed robot"), (control, "tab:orange", "control: unperturbed robot")):
        if not curve:
            continue
        x = np.array([r["minutes"] for r in curve])
        y = np.array([r["return"] for r in curve])
        ax.plot(x, y, ".", color=color, alpha=0.5, label=f"{name}, episode")
        if len(y) >= window:
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax.plot(x[window - 1 :], smooth, color=color, label=f"{name}, mean of {window}")
    nominal = rows[0]
    ax.axhline(nominal["simulator"], color="tab:green", linestyle="--", label=f"policy on simulator {nominal['simulator']:.0f}")
    ax.axhline(nominal["robot"], color="tab:red", linestyle="--", label=f"on robot at deployment {nominal['robot']:.0f}")
    ax.axhline(nominal["robot"] + nominal["gap"] / 2, color="gray", linestyle=":", label="half the gap recovered")
    ax.axvline(0.0, color="black", label="deployment")
    ax.set_xlim(left=-0.5)
    ax.set_xlabel("wall-clock minutes on the robot")
    ax.set_ylabel("episode return")
    ax.set_title("deployed on the perturbed stand-in, learning on")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def first_last(curve: list[dict[str, Any]], window: int) -> tuple[float, float] | tuple[None, None]:
    """Mean return of the first and of the last ``window`` episodes of a flow (None, None without episodes)."""
    if not curve:
        return None, None
    return float(np.mean([r["return"] for r in curve[:window]])), float(np.mean([r["return"] for r in curve[-window:]]))


def recovered(records: list[dict[str, Any]], row: dict[str, Any], window: int) -> float | None:
    """Part of the gap the last ``window`` robot episodes have recovered (1: the simulator's return)."""
    if not records or row["gap"] <= 0:
        return None
    _, recent = first_last(records, window)
    return (recent - row["robot"]) / row["gap"]


def beyond_control(records: list[dict[str, Any]], control: list[dict[str, Any]], row: dict[str, Any], window: int) -> float | None:
    """Part of the gap recovered beyond what the same learning gains without a gap (the control flow's rise).

    A policy that is still improving rises on any robot; only the rise on the
    perturbed one in excess of the control's is adaptation to the gap.
    """
    if not records or not control or row["gap"] <= 0:
        return None

    (first, last), (control_first, control_last) = first_last(records, window), first_last(control, window)
    return ((last - first) - (control_last - control_first)) / row["gap"]


def sweep(args: argparse.Namespace, out: Path) -> None:
    """Which perturbations the run's policy is sensitive to: its simulator returns under each set, nominal first.

    A policy that loses little under the stand-in's perturbation leaves no gap
    for the deployed agent to recover; this finds one that does, in seconds
    per episode instead of the robot's wall-clock time.
    """
    rows = []
    for item in ["", *args.sweep]:
        entries = [e for e in item.split(";") if e]
        returns = on_simulator(args.sim / "policy.onnx", args.episodes, args.seed, perturb_spec(entries) if entries else None)
        rows.append({"bench": "sim_to_real_sweep", "perturb": entries, "mean": float(np.mean(returns)), "returns": returns})
        emit(rows[-1])
    (out / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim", type=Path, required=True, help="the reverie train run (nominal simulator); only read")
    parser.add_argument("--randomized", type=Path, help="a run trained with env.randomize, for the second gap row")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    parser.add_argument("--perturb", nargs="*", default=DEFAULT_PERTURB, help="realtime.robot_perturb entries (key=value)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per gap measurement")
    parser.add_argument("--minutes", type=float, default=20.0, help="robot minutes of the deploy-and-learn flow (0: skip)")
    parser.add_argument("--rate-hz", type=float, default=50.0, help="control rate (cartpole at action repeat 2: 50)")
    parser.add_argument("--publish-every", type=int, default=20, help="learner updates between published versions")
    parser.add_argument("--window", type=int, default=5, help="episodes averaged for the curve and the recovered part")
    parser.add_argument("--nominal-robot", action="store_true", help="also measure the unperturbed robot (latency alone)")
    parser.add_argument(
        "--control",
        action="store_true",
        help="after the flow, the same flow from a fresh copy on the unperturbed stand-in (what further learning alone gains)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides of learner and actor (e.g. threads=1)")
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=None,
        help="only this: the run's policy on the simulator under each perturbation set "
        "(entries key=value joined by ';', e.g. 'gain=[0.5,0.5];act_delay=1'; '' is nominal), no clock; writes sweep.jsonl",
    )
    args = parser.parse_args()

    out = args.out
    out.mkdir(parents=True)
    if args.sweep is not None:
        sweep(args, out)
        return
    perturb = perturb_spec(args.perturb)
    deploy = copy_run(args.sim, out / "deploy")
    rows = [gap("nominal-trained", deploy / "policy.onnx", args, perturb)]
    if args.randomized is not None:
        randomized = copy_run(args.randomized, out / "randomized")
        rows.append(gap("randomisation-trained", randomized / "policy.onnx", args, perturb))
    records = flow(deploy, args, out, args.perturb) if args.minutes > 0 else []
    control: list[dict[str, Any]] = []
    if args.control and args.minutes > 0:
        (out / "control").mkdir()
        control = flow(copy_run(args.sim, out / "control" / "deploy"), args, out / "control", [])
    plot(records, rows, out / "sim_to_real.png", args.window, control)
    flow_first, flow_last = first_last(records, args.window)
    control_first, control_last = first_last(control, args.window)
    summary = {
        "bench": "sim_to_real",
        "sim": str(args.sim),
        "perturb": args.perturb,
        "gap": rows,
        "robot_minutes": records[-1]["minutes"] if records else 0.0,
        "robot_episodes": len(records),
        "recovered": recovered(records, rows[0], args.window),
        # The gap rows use the run's policy.onnx (exported deterministic where the run had none; export the sampling
        # policy beforehand to compare like with like); the flow runs the learner's sampling policy: its first
        # episodes are the deployed agent's own starting point.
        "flow_first": flow_first,
        "flow_last": flow_last,
        "control_first": control_first,
        "control_last": control_last,
        "recovered_beyond_control": beyond_control(records, control, rows[0], args.window),
        "machine": machine(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    emit(summary)


if __name__ == "__main__":
    main()
