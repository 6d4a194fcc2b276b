"""``reverie dream``: the world model's open-loop predictions of a checkpoint, as pictures, video and numbers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from reverie.agent.dream_report import DreamReport

DREAM_HELP = """\
usage: reverie dream LOGDIR [--episode FILE.npz] [--sequences N] [--context K]
                     [--horizon H] [--untrained] [--seed S] [--fps F] [--threads N] [-o OUT]

Shows what the world model of a run has learned: for N recorded sequences
the model observes the first K steps (the posterior, from a zero state), then
imagines the next H steps from the recorded actions alone (the prior), and
everything is decoded beside the truth. The sequences are the first K + H
steps of the most recent finished episodes in LOGDIR/replay (or in an episode
file). Writes into OUT, all files or none:

  openloop_<key>.png  per image key: for each sequence three rows (truth,
                      model, absolute error) over time; green frames were
                      observed (context), red ones imagined
  openloop_<key>.gif  the same as an animation, K + H frames
  vector_<key>.png    per vector key: truth and prediction over time, a row
                      per dimension, a column per sequence; context shaded
  reward.png          reward and continuation, predicted against true
  error.png           the open-loop error against the horizon, per key
  openloop.json       the numbers: error by horizon (in the loss's space:
                      squared error summed over a (symlog) vector's
                      dimensions or an image's pixels in [0, 1]), per key
                      and total, and reward / continuation errors

  LOGDIR           a run's logdir (checkpoint.pt, config.yaml, replay/) or its checkpoint file
  --episode FILE   take the sequences from an .npz of consecutive steps
                   ({key: [N, ...]} with the sensor keys and `action`, as
                   in a replay chunk file) instead of the replay
  --sequences N    sequences to show [default: 4]
  --context K      observed steps [default: 5]
  --horizon H      imagined steps [default: 45]
  --untrained      a freshly initialised model of the same config instead
                   of the checkpoint's weights (same sequences, same noise):
                   the baseline an error table is compared with
  --seed S         seed of the latent samples [default: 0]
  --fps F          frames per second of the animation [default: 10]
  --threads N      CPU threads for torch [default: 0, torch's choice]
  -o, --out OUT    output folder [default: LOGDIR/dream/step_<env steps>,
                   or LOGDIR/dream/untrained]; an earlier report there is replaced
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reverie dream", add_help=False)
    parser.add_argument("logdir")
    parser.add_argument("--episode", default=None)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--context", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=45)
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("-o", "--out", default=None)
    return parser


def cmd_dream(args: list[str]) -> int:
    """``reverie dream``: returns the exit status (2 for bad input, with a one-line reason on stderr)."""
    if not args or "--help" in args or "-h" in args:
        print(DREAM_HELP)
        return 0 if args else 2
    try:
        opts = _parser().parse_args(args)
    except SystemExit:
        return 2
    try:
        out, report = make_dream(opts)
    except ValueError as exc:
        print(f"reverie dream: {exc}", file=sys.stderr)
        return 2
    table = report.numbers["error_by_horizon"]
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"open-loop error by horizon ({report.numbers['sequences']} sequences, context {report.numbers['context']}, loss space):")
    for key, values in table.items():
        cells = "  ".join(f"h{h}={values[h - 1]:.4g}" for h in (1, 5, 15, 45) if h <= len(values))
        print(f"  {key:<14} {cells}")
    return 0


def make_dream(opts: argparse.Namespace) -> tuple[Path, DreamReport]:
    """Loads, selects, predicts, draws and writes; every check comes before anything is written.

    Raises:
        ValueError: for a missing or unreadable checkpoint, too few recorded
            steps, bad options.
    """
    import torch

    from reverie.agent import dream_report
    from reverie.agent.builder import build_agent
    from reverie.agent.loading import load_trained
    from reverie.agent.replay import DiskReplay

    if opts.context < 1 or opts.horizon < 1 or opts.sequences < 1:
        raise ValueError(f"--context, --horizon and --sequences must be ≥ 1 (got {opts.context}, {opts.horizon}, {opts.sequences})")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    source = Path(opts.logdir)
    logdir = source if source.is_dir() else source.parent
    agent, cfg, obs_space, act_space = load_trained(source)
    steps: dream_report.StepSource
    if opts.episode:
        steps = dream_report.load_episode_file(opts.episode)
    else:
        steps = DiskReplay(logdir / "replay")
    seqs = dream_report.recent_sequences(steps, length=opts.context + opts.horizon, count=opts.sequences, keys=agent.wm.obs_keys)
    env_steps = _env_steps(logdir / "checkpoint.pt" if source.is_dir() else source, cfg)
    if opts.untrained:
        torch.manual_seed(int(cfg.seed))
        agent = build_agent(cfg, obs_space, act_space).eval()
    info = {
        "checkpoint": str(source),
        "weights": "untrained (fresh initialisation)" if opts.untrained else "checkpoint",
        "env_steps": env_steps,
        "source": str(opts.episode or logdir / "replay"),
        "seed": opts.seed,
    }
    result = dream_report.dream(agent, seqs, context=opts.context, seed=opts.seed)
    report = dream_report.build_report(result, fps=opts.fps, info=info)
    default = "untrained" if opts.untrained else f"step_{env_steps:08d}"
    out = Path(opts.out) if opts.out else logdir / "dream" / default
    return dream_report.write_report(report, out), report


def _env_steps(path: Path, cfg: DictConfig) -> int:
    """Environment steps of a checkpoint: its agent steps × the action repeat (0 when it does not say)."""
    import torch

    from reverie import envs

    payload = torch.load(path, map_location="cpu", weights_only=False)
    agent_steps = int(payload.get("counters", {}).get("agent_steps", 0)) if isinstance(payload, dict) else 0
    family = cfg.env.name.split("/", 1)[0]
    return agent_steps * int(cfg.env.action_repeat or envs.DEFAULT_REPEAT.get(family, 1))
