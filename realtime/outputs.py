"""What a run leaves behind, written in one place for ``reverie train`` and ``reverie learner``.

At the end: the deployable policy (``policy.onnx``: the deterministic step,
two parts, with its sidecar) and the learning curve (``curve.png``). During
an asynchronous run: the deterministic policies to evaluate
(``eval/policy_<env steps>.onnx``), which ``reverie run`` evaluates in the
control loop next to the environment (the learner has none).

This module is on the learner's side: it imports the agent's parts and the
exporter, which ``agent/`` itself may not import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reverie.agent.logger import plot_curve
from reverie.agent.train import export_metadata

from .export import export_policy

#: Evaluation results of an asynchronous run (one JSON object per evaluation), beside metrics.jsonl.
EVAL_FILE = "eval.jsonl"
#: Folder of the deterministic policies waiting to be evaluated.
EVAL_DIR = "eval"


def finish_run(agent: Any, cfg: DictConfig, obs_space: dict[str, Any], env_steps: int, *, title: str) -> Path:
    """The end of a run: ``policy.onnx`` (+ sidecar), then ``curve.png`` from the metrics; returns the policy's path.

    The policy comes first: a failing plot (e.g. matplotlib missing) must not
    cost the run its deployable output.
    """
    logdir = Path(cfg.logdir)
    path = logdir / "policy.onnx"
    export_policy(agent, path, obs_space=obs_space, deterministic=True, metadata=run_metadata(cfg, env_steps))
    plot(logdir, title)
    return path


def plot(logdir: Path, title: str) -> None:
    """``curve.png``: training returns from ``metrics.jsonl``, evaluations from it and from ``eval.jsonl``."""
    plot_curve(logdir / "metrics.jsonl", logdir / "curve.png", title=title, evaluations=logdir / EVAL_FILE)


def run_metadata(cfg: DictConfig, env_steps: int) -> dict[str, Any]:
    """The sidecar's record of the run: the agent's (``export_metadata``) and the environment settings.

    ``env_config`` lets ``reverie eval`` rebuild the run's environment (action
    repeat, time limit, image size, options) from the policy file alone.
    """
    return {**export_metadata(cfg, env_steps), "env_config": env_record(cfg)}


def env_record(cfg: DictConfig) -> dict[str, Any]:
    """The environment settings a sidecar records (``env_config``), for ``reverie eval`` to rebuild the run's environment."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    assert isinstance(env, dict)  # cfg.env is a mapping node (configs/schema.py)
    return {k: env.get(k) for k in ("action_repeat", "time_limit", "size", "options")}


def eval_policy_path(logdir: Path, env_steps: int) -> Path:
    """Where the deterministic policy of ``env_steps`` waits to be evaluated."""
    return Path(logdir) / EVAL_DIR / f"policy_{env_steps:010d}.onnx"


def export_for_evaluation(agent: Any, cfg: DictConfig, obs_space: dict[str, Any], env_steps: int, wall_s: float | None = None) -> Path:
    """Writes the deterministic policy of ``env_steps`` for an evaluator; the sidecar says how to build its environment.

    ``wall_s``, the run's training wall clock at this step, goes into the
    sidecar so that the evaluation lands on a return-against-minutes curve.
    The model file is renamed into place last (see :func:`export_policy`), so
    once ``policy_<env steps>.onnx`` exists its parts and sidecar are whole.
    """
    metadata = {**run_metadata(cfg, env_steps), "eval_episodes": int(cfg.eval_episodes), "seed": int(cfg.seed)}
    if wall_s is not None:
        metadata["wall_s"] = float(wall_s)
    path = eval_policy_path(Path(cfg.logdir), env_steps)
    export_policy(agent, path, obs_space=obs_space, deterministic=True, metadata=metadata)
    return path
