"""``reverie``: the single entry point.

Subcommands take Hydra overrides (``key=value``, ``group=option``), e.g.
``reverie train env=dmc/walker_walk size=12m``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import what they need when they run
    from omegaconf import DictConfig

USAGE = """\
usage: reverie <command> [overrides…] [--help]

Dreamer world-model reinforcement learning for real-time control.

commands:
  run       asynchronous training on this machine: a learner process and
            realtime.actors actor processes (control loop + ONNX policy)
            streaming over ZeroMQ, weights hot-swapped into the loop
  learner   the learner alone (receives experience, trains, publishes weights)
  actor     one actor alone (control loop next to an env or robot)
  status    counters of a running learner and its actors
  train     synchronous training: act, replay, learn, evaluate, checkpoint
            (rerunning the same command into the same logdir resumes)
  export    the one-step policy of a checkpoint as ONNX + a JSON sidecar
  eval      run an exported policy in the fixed-rate control loop: return,
            latency percentiles, deadline misses, latency histogram
  dream     the world model's open-loop predictions of a checkpoint beside
            the truth: image grid, GIF, plots, error by horizon
  keys      generate ZeroMQ CURVE key pairs (learner and actors)
  replay    check a run's replay for invalid rows (`replay check LOGDIR [--repair]`)
  spaces    the observation and action spaces of the configured env as JSON,
            for a learner without the simulator (`learner env.spaces=FILE`)

Run `reverie <command> --help` for what can be set. Configuration is Hydra:
`group=option` picks a preset, `key=value` sets a value, e.g.

  reverie run env=dmc/cartpole_swingup realtime.rate_hz=50
  reverie train env=dmc/walker_walk size=12m steps=200000
  reverie train env=gym/Pendulum-v1 obs=vector seed=1
  reverie train exp=ref_sheeprl_xs
"""


def train_help() -> str:
    """The text of ``reverie train --help``."""
    from .config import describe_fields, group_options

    groups = {g: group_options(g) for g in ("algo", "size", "exp")}
    env_options = group_options("env")
    families = sorted({o.split("/")[0] for o in env_options})
    lines = [
        "usage: reverie train [overrides…]",
        "",
        "Trains an agent synchronously and writes to `logdir`: metrics.jsonl, TensorBoard",
        "events, config.yaml, checkpoint.pt, replay/ and curve.png. Rerunning the same",
        "command resumes from the checkpoint; a different config in that logdir is refused.",
        "Ctrl-C (or SIGTERM) stops at the end of the episode with a checkpoint, so the rerun",
        "continues exactly; a second Ctrl-C stops at once (back to the last checkpoint).",
        "",
        "config groups (group=option):",
        f"  algo=   {', '.join(groups['algo'])}",
        f"  size=   {', '.join(groups['size'])}   (1m … 400m: the official DreamerV3 sizes; dreamerv1, dreamerv2: those of V1, V2)",
        f"  env=    {len(env_options)} presets in families {', '.join(f + '/' for f in families)};",
        "          e.g. env=dmc/cartpole_swingup, env=gym/Hopper-v5, env=fake/vector.",
        "          Any other gymnasium id: env.name=gym/<id>.",
        f"  exp=    {', '.join(groups['exp'])}   (experiments that set several keys)",
        "",
        "keys (key=value):",
    ]
    for key, default, text in describe_fields():
        lines.append(f"  {key:<18} {text} [default {default}]")
    from reverie.configs.schema import RandomizeConfig

    lines += ["", "domain randomisation (env.randomize.*; all off by default, see docs/sim_to_real.md):"]
    for key, default, text in describe_fields(RandomizeConfig, "env.randomize."):
        lines.append(f"  {key:<27} {text} [default {default}]")
    lines += [
        "",
        "nested keys are set with dots, e.g. algo.optimizer.lr=1e-4, env.time_limit=200,",
        "replay.capacity=500000. `reverie train --cfg` prints the composed config.",
    ]
    return "\n".join(lines)


def cmd_train(args: list[str]) -> int:
    """``reverie train``."""
    if "--help" in args or "-h" in args:
        print(train_help())
        return 0
    from omegaconf import OmegaConf

    cfg = _compose([a for a in args if a != "--cfg"])
    if cfg is None:
        return 2
    if "--cfg" in args:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    from reverie.agent.distributed import RankLost
    from reverie.agent.train import Trainer

    try:
        trainer = Trainer(cfg)
    except ValueError as exc:
        print(f"reverie train: {exc}", file=sys.stderr)
        return 2
    if trainer.parallel is None and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop_after_episode(trainer))
    try:
        summary = trainer.run()
        if trainer.writer:  # the deployable policy and the curve, written where every run's are (realtime.outputs)
            from reverie.realtime.outputs import finish_run

            finish_run(
                trainer.agent,
                cfg,
                trainer.obs_space,
                trainer.env_steps,
                title=f"{cfg.algo.name} {cfg.size.name} {cfg.env.name} seed {cfg.seed}",
            )
    except (ValueError, RankLost) as exc:
        print(f"reverie train: {exc}", file=sys.stderr)
        return 2
    finally:
        trainer.close()
    if trainer.writer:
        if summary["stopped"]:
            print(f"stopped: {summary['env_steps']} env steps, checkpoint in {cfg.logdir}; rerun the same command to continue")
        else:
            print(f"done: {summary['env_steps']} env steps, {summary['updates']} updates, logdir {cfg.logdir}")
    return 0


def stop_after_episode(trainer: Any) -> Callable[[int, Any], None]:
    """A signal handler for ``reverie train``: the first Ctrl-C (or SIGTERM) stops the run at the end of the
    episode with a checkpoint (``Trainer.stop``), a second one stops it at once (the last checkpoint stays)."""

    def handler(signum: int, frame: Any) -> None:
        if trainer.stopping:
            raise KeyboardInterrupt
        trainer.stop()
        print(
            f"reverie train: {signal.Signals(signum).name}: stopping at the end of this episode with a checkpoint"
            " (send it again to stop now; the last checkpoint stays)",
            file=sys.stderr,
            flush=True,
        )

    return handler


def _compose(overrides: list[str]) -> DictConfig | None:
    from hydra.errors import HydraException, MissingConfigException

    from .config import compose, group_options

    try:
        return compose(overrides)
    except MissingConfigException as exc:
        message = str(exc).splitlines()[0]
        if any(o.startswith("env=") for o in overrides):
            families = sorted({o.split("/")[0] + "/" for o in group_options("env")})
            message += f"\nvalid env families: {', '.join(families)} (e.g. env=dmc/cartpole_swingup); see `reverie train --help`"
        print(f"reverie: {message}", file=sys.stderr)
    except HydraException as exc:
        print(f"reverie: {textwrap.shorten(str(exc), 600)}", file=sys.stderr)
    return None


ASYNC_HELP = """\
usage: reverie run|learner|actor [overrides…]

Asynchronous training: the actor runs the exported one-step policy with
onnxruntime in a fixed-rate control loop next to the environment (or the
MuJoCo robot stand-in) and streams experience over ZeroMQ; the learner trains
the same agent as `reverie train` from it, enforcing the train ratio, and
publishes new weights every realtime.publish_every updates, which the actor
swaps in between two ticks. `run` starts both on this machine, shows
progress, restarts a process that dies, and writes logdir/curve.png and
logdir/latency.png. Rerunning into the same logdir resumes the learner.

On two machines: `reverie learner realtime.transport=tcp` on the trainer and
`reverie actor realtime.transport=tcp realtime.host=TRAINER realtime.actor_id=robot1`
next to the robot (same env/algo/size overrides on both). With
realtime.curve=true every socket is authenticated and encrypted with the keys
from `reverie keys DIR` (realtime.keys=DIR).

realtime keys (realtime.<key>=value):
{keys}

All `reverie train` settings apply too; see `reverie train --help`.
"""


def _async_help() -> str:
    from reverie.configs.schema import RandomizeConfig, RealtimeConfig, SafetyConfig

    from .config import describe_fields

    fields = describe_fields(RealtimeConfig)
    fields += describe_fields(RandomizeConfig, "robot_perturb.") + describe_fields(SafetyConfig, "safety.")
    rows = [f"  {key:<16} {text} [default {default}]" for key, default, text in fields]
    return ASYNC_HELP.format(keys="\n".join(rows))


def _async_command(name: str, args: list[str]) -> int:
    """``reverie run``, ``reverie learner`` and ``reverie actor``."""
    if "--help" in args or "-h" in args:
        print(_async_help())
        return 0
    cfg = _compose(args)
    if cfg is None:
        return 2
    try:
        if name == "run":
            from reverie.realtime.launcher import launch

            status = launch(cfg, args)
            print(
                f"done: {status.get('env_steps', 0)} env steps, {status.get('updates', 0)} updates, "
                f"policy version {status.get('policy_version', 0)}; curve {cfg.logdir}/curve.png, latency {cfg.logdir}/latency.png"
            )
        elif name == "learner":
            from reverie.realtime.learner import run_learner

            summary = run_learner(cfg)
            print(f"learner done: {summary['env_steps']} env steps, {summary['updates']} updates, version {summary['version']}")
        else:
            from reverie.realtime.actor import run_actor
            from reverie.realtime.launcher import EXIT_ESTOP

            status = run_actor(cfg)
            print(f"actor {status['actor']} stopped: {status['ticks']} ticks, {status['deadline_misses']} missed deadlines")
            if status.get("estops"):
                print(f"reverie actor: emergency stop ({status.get('estop_reason')}); the robot stays stopped", file=sys.stderr)
                return EXIT_ESTOP
    except (ValueError, RuntimeError) as exc:
        print(f"reverie {name}: {exc}", file=sys.stderr)
        return 2
    return 0


STATUS_HELP = """\
usage: reverie status [LOGDIR | address=tcp://HOST:PORT [realtime.curve=true realtime.keys=DIR]] [overrides…]

Prints the counters of a learner and of each actor as it last reported:
env steps, updates, policy version, transitions received / refused / missing
per actor, queue depths, deadline misses, latency p99, last swap. With an
address (the learner's status port, realtime.port+2 for tcp) the running
learner is asked; otherwise LOGDIR/status.json is read (default: the logdir
the overrides compose to).
"""


def cmd_status(args: list[str]) -> int:
    """``reverie status``."""
    import json
    from pathlib import Path

    if "--help" in args or "-h" in args:
        print(STATUS_HELP)
        return 0
    address = next((a.split("=", 1)[1] for a in args if a.startswith("address=")), None)
    rest = [a for a in args if not a.startswith("address=")]
    try:
        if address:
            from reverie.realtime.status import query_status

            secure = None
            if rest:  # overrides such as realtime.curve=true realtime.keys=DIR
                cfg = _compose(rest)
                if cfg is None:
                    return 2
                if cfg.realtime.curve:
                    import zmq

                    from reverie.realtime.endpoints import Security

                    secure = Security(cfg, zmq.Context.instance(), server=False, name=cfg.realtime.actor_id)()
            status = query_status(address, secure=secure)
        else:
            if rest and "=" not in rest[0]:
                path = Path(rest[0]) / "status.json"
            else:
                cfg = _compose(rest)
                if cfg is None:
                    return 2
                path = Path(cfg.logdir) / "status.json"
            if not path.exists():
                raise ValueError(f"{path} does not exist: no learner has run there (or pass address=…)")
            status = json.loads(path.read_text())
    except (ValueError, TimeoutError) as exc:
        print(f"reverie status: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=1, default=str))
    return 0


EXPORT_HELP = """\
usage: reverie export CHECKPOINT [-o policy.onnx] [--deterministic] [--fused] [--quantize int8 [--max-deviation 0.05]]

Exports one control step of a trained agent to ONNX (opset 17) in two parts:
POLICY.onnx, the critical path (observation keys…, deter, post_deter, noise) →
(action, stoch), and POLICY.advance.onnx, the recurrent advance (deter, stoch,
action) → (deter, post_deter) that the control loop runs after sending the
action. Writes the signature to POLICY.onnx.json (names, shapes, dtypes,
action bounds, noise layout, algo, size, sha256).

  CHECKPOINT        a run's logdir or its checkpoint.pt (config.yaml beside it)
  -o, --output      the ONNX file [default: CHECKPOINT_DIR/policy.onnx]
  --deterministic   export the mode policy (deployment) instead of sampling
  --fused           one graph, (observation keys…, deter, stoch, prev_action,
                    is_first, noise) → (action, deter, stoch) (sidecar format 1)
  --quantize int8   int8 matrix products (onnxruntime dynamic quantization)
                    and, for pixel policies, int8 convolutions of 32 input
                    channels or more (static: int8 weights per channel, uint8
                    activations calibrated on 200 observations of an fp32
                    rollout of the run's task).
                    Before writing, the export runs it beside fp32 on the
                    run's task (other seeds than the calibration's): the mean
                    |Δaction| over a 1,000-step rollout and the returns of 10
                    episodes of each, printed and kept in the sidecar; it is
                    refused when the mean |Δaction| exceeds --max-deviation
  --max-deviation X the bound on the mean |Δaction| [default: 0.05]
  --deviation-steps N, --eval-episodes N   the report's length [default: 1000, 10]
"""


def cmd_export(args: list[str]) -> int:
    """``reverie export``."""
    import argparse

    if not args or "--help" in args or "-h" in args:
        print(EXPORT_HELP)
        return 0 if args else 2
    parser = argparse.ArgumentParser(prog="reverie export", add_help=False)
    parser.add_argument("checkpoint")
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--quantize", choices=["int8"], default=None)
    parser.add_argument("--max-deviation", type=float, default=None)
    parser.add_argument("--deviation-steps", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    try:
        opts = parser.parse_args(args)
    except SystemExit:
        return 2
    from pathlib import Path

    from reverie import envs
    from reverie.agent.loading import load_trained
    from reverie.realtime.export import export_policy
    from reverie.realtime.outputs import env_record
    from reverie.realtime.quantize import DEFAULT_BOUND, export_quantized
    from reverie.realtime.signature import FORMAT_SPLIT, advance_path

    try:
        agent, cfg, obs_space, _ = load_trained(opts.checkpoint)
    except ValueError as exc:
        print(f"reverie export: {exc}", file=sys.stderr)
        return 2
    source = Path(opts.checkpoint)
    output = Path(opts.output) if opts.output else (source if source.is_dir() else source.parent) / "policy.onnx"
    export_args = {
        "obs_space": obs_space,
        "deterministic": opts.deterministic,
        "split": not opts.fused,
        "metadata": {
            "algo": cfg.algo.name,
            "size": cfg.size.name,
            "env": cfg.env.name,
            "obs": cfg.obs,
            "env_config": env_record(cfg),  # so `reverie eval` rebuilds the run's environment
            "checkpoint": str(source),
        },
    }
    if opts.quantize:
        bound = DEFAULT_BOUND if opts.max_deviation is None else opts.max_deviation
        try:
            sidecar = export_quantized(
                agent,
                output,
                make_env=lambda seed: envs.from_config(cfg, seed),
                mode=opts.quantize,
                bound=bound,
                steps=opts.deviation_steps,
                episodes=opts.eval_episodes,
                **export_args,
            )
        except ValueError as exc:
            print(f"reverie export: {exc}", file=sys.stderr)
            return 2
        report = sidecar["quantize"]["report"]
        print(
            f"{opts.quantize}: mean |Δaction| {report['mean_abs_action']:.4f} (p99 {report['p99_abs_action']:.4f}, max"
            f" {report['max_abs_action']:.4f}) over {report['steps']} steps, bound {bound}; return over {report['episodes']} episodes:"
            f" fp32 {report['return_fp32']}, {opts.quantize} {report['return_int8']}"
        )
    else:
        sidecar = export_policy(agent, output, **export_args)
    files = [output, advance_path(output)] if sidecar["format"] == FORMAT_SPLIT else [output]
    size = sum(f.stat().st_size for f in files) / 1e6
    print(f"wrote {' and '.join(map(str, files))} ({size:.2f} MB) and {output}.json; sha256 {sidecar['sha256'][:16]}…")
    return 0


EVAL_HELP = """\
usage: reverie eval POLICY.onnx [key=value …]

Runs the exported policy (checked against POLICY.onnx.json) with onnxruntime
in the fixed-rate control loop: ticks at t0 + k·period, per-tick latency,
deadline misses, and the safe action on a miss, an exception or a non-finite
observation or action. Prints a JSON summary and writes OUT/eval.json and
OUT/latency.png.

keys:
  env=NAME          environment [default: the env recorded in the sidecar]
  rate_hz=50        control rate
  episodes=10       episodes to run (also steps=N or seconds=S; first reached stops)
  robot=false       true: a MuJoCo robot stand-in that advances physics in
                    wall-clock time (a late action costs control quality)
  safe_action=hold  hold | zero
  threads=1         onnxruntime intra-op threads
  seed=0            environment and noise seed
  out=DIR           [default: POLICY's folder / eval]
"""


def _parse_keys(args: list[str], defaults: dict) -> dict:
    values = dict(defaults)
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"unknown argument {arg!r}; valid keys: {', '.join(defaults)}")
        values[key] = value
    return values


def cmd_eval(args: list[str]) -> int:
    """``reverie eval``."""
    if not args or "--help" in args or "-h" in args:
        print(EVAL_HELP)
        return 0 if args else 2
    import json
    from pathlib import Path

    defaults = {
        "env": "",
        "rate_hz": "50",
        "episodes": "10",
        "steps": "",
        "seconds": "",
        "robot": "false",
        "safe_action": "hold",
        "threads": "1",
        "seed": "0",
        "out": "",
    }
    try:
        opts = _parse_keys(args[1:], defaults)
        from reverie.realtime.evaluate import evaluate_policy

        policy_path = Path(args[0])
        out = Path(opts["out"]) if opts["out"] else policy_path.parent / "eval"
        summary = evaluate_policy(
            policy_path,
            env=opts["env"] or None,
            rate_hz=float(opts["rate_hz"]),
            episodes=int(opts["episodes"]) if opts["episodes"] else None,
            steps=int(opts["steps"]) if opts["steps"] else None,
            seconds=float(opts["seconds"]) if opts["seconds"] else None,
            robot=opts["robot"].lower() in ("1", "true", "yes"),
            safe_action=opts["safe_action"],
            threads=int(opts["threads"]),
            seed=int(opts["seed"]),
            out=out,
        )
    except ValueError as exc:
        print(f"reverie eval: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


KEYS_HELP = """\
usage: reverie keys DIR [NAME …]

Writes a CURVE key pair per NAME (default: learner actor) into DIR:
NAME.key (public; give it to the peers) and NAME.key_secret (private, mode 600).
"""


def cmd_keys(args: list[str]) -> int:
    """``reverie keys``."""
    if not args or "--help" in args or "-h" in args:
        print(KEYS_HELP)
        return 0 if args else 2
    from reverie.realtime.security import generate_keys

    names = tuple(args[1:]) or ("learner", "actor")
    for name, path in generate_keys(args[0], names).items():
        print(f"{name}: {path} and {path}_secret")
    return 0


REPLAY_HELP = """\
usage: reverie replay check LOGDIR [--repair]

Scans the replay of the run in LOGDIR for rows that validation by meaning
refuses (class indices out of range, flags other than 0/1, actions outside
their bounds, non-finite or huge values, is_terminal without is_last) and
reports them by reason, as JSON. Exit status 1 when any row is invalid.
It checks the replay generation the run's checkpoint names (the one a
resume loads), or the newest one when there is no checkpoint.

  --repair   quarantine those rows in place: they are never sampled again.
             The previous quarantine list and replay.json are copied to
             LOGDIR/replay/backup-<time>/ first. Stop the run's learner first;
             a learner or trainer that starts on such a replay repairs it itself.
"""


def cmd_replay(args: list[str]) -> int:
    """``reverie replay check``."""
    import json

    if not args or "--help" in args or "-h" in args:
        print(REPLAY_HELP)
        return 0 if args else 2
    positional = [a for a in args if not a.startswith("--")]
    unknown = [a for a in args if a.startswith("--") and a != "--repair"]
    if len(positional) != 2 or positional[0] != "check" or unknown:
        print(f"reverie replay: expected `check LOGDIR [--repair]`, got {' '.join(args)!r}", file=sys.stderr)
        return 2
    from reverie.agent.replay_check import check_replay

    try:
        report = check_replay(positional[1], repair="--repair" in args)
    except ValueError as exc:
        print(f"reverie replay: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 1 if report["invalid"] and "--repair" not in args else 0


SPACES_HELP = """\
usage: reverie spaces [overrides…] [-o FILE]

Builds the environment the overrides describe (without stepping it) and writes
its observation and action spaces as JSON (to FILE, or stdout). A learner
given `env.spaces=FILE` takes its spaces from that file and needs no
simulator: run this where the environment or robot is (the robot-side install
suffices), copy the file to the learner's machine.
"""


def cmd_spaces(args: list[str]) -> int:
    """``reverie spaces``."""
    import json
    from pathlib import Path

    if "--help" in args or "-h" in args:
        print(SPACES_HELP)
        return 0
    output = None
    if "-o" in args:
        at = args.index("-o")
        if at + 1 >= len(args):
            print("reverie spaces: -o needs a file name", file=sys.stderr)
            return 2
        output, args = Path(args[at + 1]), args[:at] + args[at + 2 :]
    cfg = _compose(args)
    if cfg is None:
        return 2
    from reverie import envs
    from reverie.realtime.spaces import spaces_to_json

    try:
        env = envs.from_config(cfg, int(cfg.seed))
    except ValueError as exc:
        print(f"reverie spaces: {exc}", file=sys.stderr)
        return 2
    try:
        text = json.dumps(spaces_to_json(env.obs_space, env.act_space), indent=1)
    finally:
        env.close()
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n")
        print(f"wrote {output}")
    return 0


def cmd_dream(args: list[str]) -> int:
    """``reverie dream`` (see ``reverie.cli.dream``)."""
    from .dream import cmd_dream as dream

    return dream(args)


#: import name → (distribution name, the extra of pyproject.toml that brings it; "" for the base install).
PACKAGES = {
    "torch": ("torch", "full"),
    "onnx": ("onnx", "full"),
    "tensorboard": ("tensorboard", "full"),
    "matplotlib": ("matplotlib", "full"),
    "tqdm": ("tqdm", "full"),
    "ale_py": ("ale-py", "full"),
    "crafter": ("crafter", "full"),
    "dm_control": ("dm-control", "sim"),
    "gymnasium": ("gymnasium", "sim"),
    "mujoco": ("mujoco", "sim"),
    "onnxruntime": ("onnxruntime", ""),
    "zmq": ("pyzmq", ""),
    "msgpack": ("msgpack", ""),
    "hydra": ("hydra-core", ""),
    "omegaconf": ("omegaconf", ""),
}

#: What each extra is for, in the missing-dependency message.
EXTRAS = {
    "full": "training, export and the learner need the full install",
    "sim": "simulated environments and the MuJoCo stand-in robot need the simulators",
}


def missing_dependency(command: str, exc: ModuleNotFoundError) -> str:
    """The one-line message for a command that needs a package this install lacks, and how to get it."""
    name = (exc.name or "").split(".")[0]
    package, extra = PACKAGES.get(name, (name or str(exc), ""))
    if extra:
        how = f"{EXTRAS[extra]}: `pip install '.[{extra}]'` in the reverie checkout (`make test` sets up everything)"
        if extra == "full":
            how += ", with the CPU build of torch first: `pip install torch==2.13.0`"
    else:
        how = f"`pip install {package}`, or reinstall reverie (`pip install .`)"
    return f"reverie {command}: the Python package {package!r} is not installed; {how}"


COMMANDS = {
    "run": lambda args: _async_command("run", args),
    "learner": lambda args: _async_command("learner", args),
    "actor": lambda args: _async_command("actor", args),
    "status": cmd_status,
    "train": cmd_train,
    "export": cmd_export,
    "eval": cmd_eval,
    "keys": cmd_keys,
    "replay": cmd_replay,
    "dream": cmd_dream,
    "spaces": cmd_spaces,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reverie`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"reverie: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 2
    if not faulthandler.is_enabled():
        # A native crash (an abort in a C++ library at exit, a segfault) prints every thread's Python stack to stderr.
        with contextlib.suppress(OSError, ValueError):  # a stderr without a file descriptor: no report, nothing else
            faulthandler.enable()
    try:
        return COMMANDS[command](rest)
    except ModuleNotFoundError as exc:
        # A dependency is missing from this install (the robot-only one has no torch): say which, and how to get it.
        print(missing_dependency(command, exc), file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
