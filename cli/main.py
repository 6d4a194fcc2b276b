"""``reverie``: the single entry point.

Subcommands take Hydra overrides (``key=value``, ``group=option``), e.g.
``reverie train env=dmc/walker_walk size=12m``.
"""

from __future__ import annotations

import sys
import textwrap

USAGE = """\
usage: reverie <command> [overrides…] [--help]

Dreamer world-model reinforcement learning for real-time control.

commands:
  train     synchronous training: act, replay, learn, evaluate, checkpoint
            (rerunning the same command into the same logdir resumes)

Run `reverie <command> --help` for what can be set. Configuration is Hydra:
`group=option` picks a preset, `key=value` sets a value, e.g.

  reverie train env=dmc/walker_walk size=12m steps=200000
  reverie train env=gym/Pendulum-v1 obs=vector seed=1
  reverie train exp=ref_sheeprl_xs
"""


def train_help() -> str:
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
        "",
        "config groups (group=option):",
        f"  algo=   {', '.join(groups['algo'])}",
        f"  size=   {', '.join(groups['size'])}   (official DreamerV3 presets)",
        f"  env=    {len(env_options)} presets in families {', '.join(f + '/' for f in families)};",
        "          e.g. env=dmc/cartpole_swingup, env=gym/Hopper-v5, env=fake/vector.",
        "          Any other gymnasium id: env.name=gym/<id>.",
        f"  exp=    {', '.join(groups['exp'])}   (experiments that set several keys)",
        "",
        "keys (key=value):",
    ]
    for key, default, text in describe_fields():
        lines.append(f"  {key:<18} {text} [default {default}]")
    lines += [
        "",
        "nested keys are set with dots, e.g. algo.optimizer.lr=1e-4, env.time_limit=200,",
        "replay.capacity=500000. `reverie train --cfg` prints the composed config.",
    ]
    return "\n".join(lines)


def cmd_train(args: list[str]) -> int:
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
    from reverie.agent.train import train

    try:
        summary = train(cfg)
    except ValueError as exc:
        print(f"reverie train: {exc}", file=sys.stderr)
        return 2
    print(f"done: {summary['env_steps']} env steps, {summary['updates']} updates, logdir {cfg.logdir}")
    return 0


def _compose(overrides: list[str]):
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


COMMANDS = {"train": cmd_train}


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
    return COMMANDS[command](rest)


if __name__ == "__main__":
    sys.exit(main())
