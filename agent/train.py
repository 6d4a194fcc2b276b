"""The synchronous loop behind ``reverie train``: act, store, train, evaluate, checkpoint."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from reverie import envs

from . import checkpoint
from .builder import build_agent, step_spec
from .logger import MetricsLogger, plot_curve
from .replay import Replay

#: Keys whose change does not alter a run, so a resumed run may differ in them
#: (``realtime``: transport and actor settings, outside the learner's maths;
#: ``logdir``: a run copied or moved elsewhere is the same run).
RESUMABLE_KEYS = {
    "logdir",
    "steps",
    "progress",
    "log_every",
    "eval_every",
    "eval_episodes",
    "report_every",
    "report_context",
    "report_horizon",
    "report_sequences",
    "checkpoint_every",
    "device",
    "threads",
    "compile",
    "realtime",
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for but torch sees no CUDA device; use device=auto or device=cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def _warn_no_continuation_head() -> None:
    """Once per process: a terminating task without a continuation head cannot be modelled."""
    warnings.warn(
        "this task ends episodes by termination, but algo.use_cont=false: the world model will imagine that episodes"
        " never end (a fixed discount); set algo.use_cont=true",
        stacklevel=3,
    )


def check_config(logdir: Path, cfg: DictConfig) -> None:
    """Refuses a logdir whose earlier run had another config (see :data:`RESUMABLE_KEYS`)."""
    path = logdir / "config.yaml"
    if not path.exists():
        return
    current = OmegaConf.to_container(cfg, resolve=True)
    # Options added since that run was started take their defaults, which
    # reproduce the behaviour it had.
    from reverie.configs.schema import Config

    try:
        before = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)), resolve=True)
    except Exception as exc:  # unreadable YAML, or keys the schema refuses
        raise ValueError(f"cannot read {path} of the earlier run in this logdir: {exc}") from exc
    diff = sorted(k for k in _diff(before, current) if k.split(".")[0] not in RESUMABLE_KEYS)
    if diff:
        raise ValueError(
            f"logdir {logdir} holds a run with another config (differs in: {', '.join(diff)}); "
            "use another logdir=… or the same settings to resume"
        )


def save_config(logdir: Path, cfg: DictConfig) -> None:
    """Writes ``config.yaml`` (once the run could be built, so a failed start leaves no config behind)."""
    logdir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, logdir / "config.yaml", resolve=True)


def _diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.") if k in a and k in b else {f"{prefix}{k}"}
        return out
    return set() if a == b else {prefix.rstrip(".")}


def window_summary(window: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the updates of a logging window (empty for none)."""
    return {k: float(np.mean([m[k] for m in window])) for k in window[0]} if window else {}


def _batch(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[None] for k, v in obs.items() if not k.startswith("log/")}


class Trainer:
    """Owns the environment, agent, replay and counters of one run.

    Args:
        cfg: the composed config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.logdir = Path(cfg.logdir)
        check_config(self.logdir, cfg)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        family = cfg.env.name.split("/", 1)[0]
        self.repeat = int(cfg.env.action_repeat or envs.DEFAULT_REPEAT.get(family, 1))
        self.env = envs.from_config(cfg, cfg.seed)
        self.eval_env = envs.from_config(cfg, cfg.seed + 1_000_000)
        self.agent = build_agent(cfg, self.env.obs_space, self.env.act_space).to(self.device)
        self.spec = step_spec(cfg, self.env.obs_space, self.env.act_space)
        self.replay = Replay(
            capacity=cfg.replay.capacity,
            seq_len=cfg.batch_length + 1,
            directory=self.logdir / "replay",
            chunk_size=cfg.replay.chunk_size,
            seed=cfg.seed,
        )
        self.counters: dict[str, Any] = {
            "agent_steps": 0,
            "updates": 0,
            "episodes": 0,
            "eval_episodes": 0,
            "train_credit": 0.0,
            "last_eval": 0,
            "last_ckpt": 0,
            "last_report": 0,
            "last_log": 0,
            "wall_s": 0.0,
            "dropped_batches": 0,
        }
        self.resumed = False
        path = self.logdir / checkpoint.CHECKPOINT
        if path.exists():
            payload = checkpoint.load(path, self.agent)
            self.counters.update(payload["counters"])
            checkpoint.set_rng_state(payload["rng"])
            if not self.replay.load():
                raise ValueError(f"{path} exists but its replay in {self.logdir / 'replay'} is missing")
            self.resumed = True
            self.repair_replay()
        save_config(self.logdir, cfg)
        if cfg.compile:
            self.agent.compile()
        self._start_time, self._wall_base = time.time(), self.counters["wall_s"]
        self.autocast = self.cfg.precision == "bf16"
        if self.cfg.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.cfg.precision!r}; valid: fp32, bf16")

    def wall_s(self) -> float:
        """Training wall clock, summed over resumed runs."""
        return self._wall_base + time.time() - self._start_time

    @property
    def env_steps(self) -> int:
        """Simulator steps so far (agent steps × action repeat)."""
        return self.counters["agent_steps"] * self.repeat

    def _precision(self):
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --------------------------------------------------------------- parts
    def replay_ready(self) -> bool:
        """Enough steps in replay to start training (``train_start``, and one sequence)."""
        return len(self.replay) >= max(self.cfg.train_start, self.cfg.batch_length + 1)

    def earn_credit(self, agent_steps: int) -> None:
        """Adds the updates the train ratio owes for ``agent_steps`` new steps (once replay is ready)."""
        if self.replay_ready():
            cfg = self.cfg
            self.counters["train_credit"] += agent_steps * cfg.train_ratio / (cfg.batch_size * cfg.batch_length)

    def train_updates(self) -> list[dict[str, float]]:
        """Runs the updates the train ratio owes after one more agent step."""
        self.earn_credit(1)
        metrics = []
        while self.counters["train_credit"] >= 1.0:
            metrics.append(self.update())
        return metrics

    def repair_replay(self) -> int:
        """Quarantines the replay rows that fail validation by meaning (say so once); returns how many were new."""
        steps = self.replay.scan(self.spec.bad_rows, keys=self.spec.checked_keys)
        new = self.replay.quarantine(steps % self.replay.capacity) if len(steps) else 0
        if new:
            print(
                f"reverie: {new} replay rows in {self.logdir / 'replay'} fail validation (see `reverie replay check`);"
                " they are quarantined and never sampled",
                file=sys.stderr,
            )
        return new

    def sample_batch(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """A replayed batch whose every value is valid.

        A batch that would fail inside the update (a class index out of range,
        a non-finite value, …) is dropped and counted (``dropped_batches``),
        its bad rows quarantined so they are never sampled again, and another
        is drawn; each redraw has fewer bad rows left to hit.
        """
        while True:
            batch, pos = self.replay.sample(self.cfg.batch_size)
            bad = self.spec.bad_rows(batch, lead=2)
            if not bad.any():
                return batch, pos
            self.replay.quarantine(pos[bad])
            self.counters["dropped_batches"] += 1

    def update(self) -> dict[str, float]:
        """One update on a sampled batch (spends one unit of train credit); returns its metrics."""
        self.counters["train_credit"] -= 1.0
        batch, pos = self.sample_batch()
        with self._precision():
            metrics, latents = self.agent.train_step(batch)
        self.replay.update_latents(pos[:, 1:], latents)
        self.counters["updates"] += 1
        return metrics

    def evaluate(self) -> list[float]:
        """Episodes with the deterministic policy on the evaluation env."""
        returns = []
        for _ in range(self.cfg.eval_episodes):
            seed = self.cfg.seed + 1_000_000 + self.counters["eval_episodes"]
            self.counters["eval_episodes"] += 1
            obs = self.eval_env.reset(seed=seed)
            state = self.agent.init_state(1)
            total = 0.0
            while True:
                with self._precision():
                    action, state = self.agent.policy(_batch(obs), state, mode=True)
                obs = self.eval_env.step(self._to_env(action))
                total += float(obs["reward"])
                if obs["is_last"]:
                    break
            returns.append(total)
        return returns

    def _to_env(self, action: torch.Tensor) -> np.ndarray:
        action = action[0].float().cpu().numpy()
        if self.env.act_space.discrete:
            # Exactly one-hot (the straight-through sample is one-hot up to rounding).
            return np.eye(action.shape[0], dtype=np.float32)[int(action.argmax())]
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Trains until ``cfg.steps`` environment steps; returns a summary."""
        cfg = self.cfg
        logger = MetricsLogger(self.logdir)
        bar = _progress(cfg, self.env_steps)
        start_time = time.time()
        self._start_time, self._wall_base = start_time, self.counters["wall_s"]
        window_time, window_updates = start_time, self.counters["updates"]
        window: list[dict[str, float]] = []
        last_return = math.nan
        obs = None
        try:
            while self.env_steps < cfg.steps:
                if obs is None:
                    # Episodes are seeded by their index, so a resumed run
                    # sees the same episodes as an uninterrupted one.
                    obs = self.env.reset(seed=cfg.seed + self.counters["episodes"])
                    state = self.agent.init_state(1)
                    episode_return, episode_length = 0.0, 0
                with self._precision():
                    action, state = self.agent.policy(_batch(obs), state)
                env_action = self._to_env(action)
                self.replay.add(
                    {
                        **{k: v for k, v in obs.items() if not k.startswith("log/")},
                        "action": env_action,
                        "deter": state["deter"][0].to(torch.float16).cpu().numpy(),
                        "stoch": self.agent.wm.rssm.store_index(state["stoch"][0]).to(torch.uint8).cpu().numpy(),
                    }
                )
                self.counters["agent_steps"] += 1
                window += self.train_updates()
                if obs["is_last"]:
                    if obs["is_terminal"] and self.agent.wm.cont is None:
                        _warn_no_continuation_head()
                    self.counters["episodes"] += 1
                    last_return = episode_return
                    # Per-episode diagnostics of the env (Crafter's achievement counts) go along as episode/<name>.
                    diagnostics = {f"episode/{k[4:]}": int(v) for k, v in obs.items() if k.startswith("log/achievement_")}
                    diagnostics.update(envs.episode_log(obs))  # the draws of env.randomize, as randomize/<param>/<element>
                    logger.write(
                        self.env_steps,
                        {"episode/return": episode_return, "episode/length": episode_length, **diagnostics, "time/wall_s": self.wall_s()},
                    )
                    obs = None
                    self._maybe_evaluate(logger)
                    self._maybe_checkpoint()
                else:
                    obs = self.env.step(env_action)
                    episode_return += float(obs["reward"])
                    episode_length += 1
                if self.env_steps - self.counters["last_log"] >= cfg.log_every and window:
                    self.counters["last_log"] = self.env_steps
                    now = time.time()
                    summary = window_summary(window)
                    summary["train/updates_per_s"] = (self.counters["updates"] - window_updates) / max(now - window_time, 1e-9)
                    summary["train/env_steps_per_s"] = cfg.log_every / max(now - window_time, 1e-9)
                    window_time, window_updates = now, self.counters["updates"]
                    summary["train/updates"] = self.counters["updates"]
                    summary["train/replay_steps"] = len(self.replay)
                    summary["train/dropped_batches"] = self.counters["dropped_batches"]
                    summary["train/max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                    logger.write(self.env_steps, summary)
                    window = []
                    if bar is not None:
                        bar.set_postfix(updates_per_s=f"{summary['train/updates_per_s']:.2f}", ret=f"{last_return:.1f}")
                # Any step, not only episode ends: the report reads replay alone (so a
                # run that stops mid-episode still gets its report at the last interval).
                self._maybe_report(logger)
                if bar is not None:
                    bar.update(self.env_steps - bar.n)
            self._maybe_evaluate(logger, force=True)
            self.save()
        finally:
            logger.close()
            if bar is not None:
                bar.close()
        self.finish(f"{cfg.algo.name} {cfg.size.name} {cfg.env.name} seed {cfg.seed}")
        return {
            "env_steps": self.env_steps,
            "updates": self.counters["updates"],
            "episodes": self.counters["episodes"],
            "wall_s": self.wall_s(),
        }

    def export(self) -> Path:
        """Writes the deterministic policy step to ``logdir/policy.onnx`` (+ sidecar)."""
        from reverie.realtime.export import export_policy

        path = self.logdir / "policy.onnx"
        export_policy(self.agent, path, obs_space=self.env.obs_space, deterministic=True, metadata=self.export_metadata())
        return path

    def export_metadata(self) -> dict[str, Any]:
        """What an exported policy's sidecar records about the run."""
        cfg = self.cfg
        return {"algo": cfg.algo.name, "size": cfg.size.name, "env": cfg.env.name, "obs": cfg.obs, "env_steps": self.env_steps}

    def finish(self, title: str) -> None:
        """End of a run: the exported ``policy.onnx``, then ``curve.png`` from the metrics.

        The policy comes first: a failing plot (e.g. matplotlib missing) must
        not cost the run its deployable output.
        """
        self.export()
        plot_curve(self.logdir / "metrics.jsonl", self.logdir / "curve.png", title=title)

    def _maybe_evaluate(self, logger: MetricsLogger, force: bool = False) -> None:
        if not self.cfg.eval_episodes:
            return
        due = self.env_steps - self.counters["last_eval"] >= self.cfg.eval_every
        if not (due or (force and self.counters["last_eval"] != self.env_steps)):
            return
        self.counters["last_eval"] = self.env_steps
        returns = self.evaluate()
        logger.write(
            self.env_steps,
            {"eval/return": float(np.mean(returns)), "eval/return_std": float(np.std(returns)), "time/wall_s": self.wall_s()},
        )

    def _maybe_report(self, logger: MetricsLogger) -> None:
        """Every ``report_every`` environment steps, the dream report (see :mod:`reverie.agent.dream_report`).

        Files go to ``logdir/dream/step_<env steps>/``, images and the video
        to TensorBoard, the open-loop errors and the report's cost to the
        metrics. It is a view: a report that cannot be made (no episode of
        ``report_context + report_horizon`` steps yet) or fails is skipped
        with a warning and never stops training.
        """
        cfg = self.cfg
        if not cfg.report_every or self.env_steps - self.counters["last_report"] < cfg.report_every:
            return
        self.counters["last_report"] = self.env_steps
        from .dream_report import training_report

        try:
            metrics = training_report(
                self.agent,
                self.replay,
                context=cfg.report_context,
                horizon=cfg.report_horizon,
                sequences=cfg.report_sequences,
                step=self.env_steps,
                out_dir=self.logdir / "dream" / f"step_{self.env_steps:08d}",
                writer=logger.tensorboard,
            )
        except Exception as exc:
            warnings.warn(f"dream report at step {self.env_steps} skipped: {type(exc).__name__}: {exc}", stacklevel=2)
            return
        logger.write(self.env_steps, metrics)

    def _maybe_checkpoint(self) -> None:
        if self.env_steps - self.counters["last_ckpt"] >= self.cfg.checkpoint_every:
            self.save()

    def save(self) -> None:
        """Checkpoint and replay, consistent with each other (taken between episodes)."""
        self.counters["last_ckpt"] = self.env_steps
        self.counters["wall_s"] = self.wall_s()
        self.replay.save()
        checkpoint.save(
            self.logdir, self.agent, self.counters, {"spaces": checkpoint.spaces_to_dict(self.env.obs_space, self.env.act_space)}
        )


def _progress(cfg: DictConfig, initial: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=initial, unit="step", desc=f"train {cfg.env.name}", dynamic_ncols=True)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Runs (or resumes) the training run described by ``cfg``."""
    return Trainer(cfg).run()
