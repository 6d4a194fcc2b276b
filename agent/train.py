"""The synchronous loop behind ``reverie train``: act, store, train, evaluate, checkpoint.

The loop composes the parts it shares with ``reverie learner``: the run's
bookkeeping (:class:`~reverie.agent.run.RunBook`), the train ratio
(:class:`~reverie.agent.ratio.TrainRatio`) and the updates
(:class:`~reverie.agent.updater.Updater`). It ends at ``steps`` with the
checkpoint; the exported policy and the curve are written by the caller
(``reverie train``, through :mod:`reverie.realtime.outputs`), since ``agent/``
does not import ``realtime/``.

Under ``torchrun`` rank 0 steps the environment and sends each step to the
other ranks, which store it as rank 0 does; every rank then trains on its own
batch (docs/design.md, "Data parallel").
"""

from __future__ import annotations

import functools
import math
import resource
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from reverie import envs

from . import checkpoint
from .distributed import RankLost, collective_failed, lost_rank_message
from .logger import MetricsLogger
from .parts import RunAccess, assemble_run
from .run import (  # noqa: F401  (re-exported: where callers found them before the parts were split out)
    RESUMABLE_KEYS,
    MetricsWindow,
    RunBook,
    check_config,
    rank_seed,
    resolve_device,
    save_config,
    seed_everything,
    window_summary,
)


@functools.cache
def _warn_no_continuation_head() -> None:
    """Once per process: a terminating task without a continuation head cannot be modelled."""
    warnings.warn(
        "this task ends episodes by termination, but algo.use_cont=false: the world model will imagine that episodes"
        " never end (a fixed discount); set algo.use_cont=true",
        stacklevel=3,
    )


#: ``algo.prefill``: how rank 0 acts until training starts.
PREFILLS = ("policy", "uniform")


def _batch(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[None] for k, v in obs.items() if not k.startswith("log/")}


class Trainer(RunAccess):
    """Owns the environment, agent, replay and counters of one run.

    Args:
        cfg: the composed config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        # Checked before anything is built: a typo costs no environments, agent or replay.
        if cfg.algo.prefill not in PREFILLS:
            raise ValueError(f"unknown algo.prefill {cfg.algo.prefill!r}; valid: {', '.join(PREFILLS)}")
        # Rank 0's environments (_make_envs); the other ranks have none and never act.
        self.env: envs.Env | None = None
        self.eval_env: envs.Env | None = None
        parts = assemble_run(cfg, self._make_envs)
        self._adopt(parts)
        self._obs: dict[str, np.ndarray] | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """Asks ``run`` to end at the next episode end, after a checkpoint; rerunning the command continues exactly.

        Safe to call from a signal handler or another thread. A run of one
        process only: under data parallel a stop is a lost rank (``RankLost``).
        """
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def _make_envs(self, book: RunBook) -> tuple[dict, Any]:
        """Rank 0 collects for every rank: its environments give the run's spaces."""
        cfg = self.cfg
        self.env = env = envs.from_config(cfg, cfg.seed)
        self.eval_env = envs.from_config(cfg, cfg.seed + 1_000_000)
        return env.obs_space, env.act_space

    # ------------------------------------------------------------ acting
    def _collect(self) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
        """One agent step on rank 0: the replay step, and the finished episode's summary when it ends there."""
        cfg, env = self.cfg, self.env
        assert env is not None, "only rank 0 collects, and it made the environments"
        if self._obs is None:
            # Episodes are seeded by their index, so a resumed run
            # sees the same episodes as an uninterrupted one.
            self._obs = env.reset(seed=cfg.seed + self.counters["episodes"])
            self._state = self.agent.init_state(1)
            self._episode = [0.0, 0]
        obs = self._obs
        with self.updater.autocast():
            action, self._state = self.agent.policy(_batch(obs), self._state)
        if self.cfg.algo.prefill == "uniform" and not self.ratio.ready(len(self.replay)):
            # Uniform random actions until training starts (V1, V2); the carry takes the action actually sent.
            action = self._uniform_action(action)
            self._state = {**self._state, "prev_action": action}
        env_action = self._to_env(action)
        step = {
            **{k: v for k, v in obs.items() if not k.startswith("log/")},
            "action": env_action,
            "deter": self._state["deter"][0].to(torch.float16).cpu().numpy(),
            "stoch": self.agent.wm.rssm.store_index(self._state["stoch"][0]).to(torch.uint8).cpu().numpy(),
        }
        if obs["is_last"]:
            if obs["is_terminal"] and self.agent.wm.cont is None:
                _warn_no_continuation_head()
            # Per-episode diagnostics of the env (Crafter's achievement counts) go along as episode/<name>.
            diagnostics: dict[str, float] = {f"episode/{k[4:]}": int(v) for k, v in obs.items() if k.startswith("log/achievement_")}
            diagnostics.update(envs.episode_log(obs))  # the draws of env.randomize, as randomize/<param>/<element>
            self._obs = None
            return step, {"episode/return": self._episode[0], "episode/length": self._episode[1], **diagnostics}
        self._obs = env.step(env_action)
        self._episode[0] += float(self._obs["reward"])
        self._episode[1] += 1
        return step, None

    def evaluate(self) -> list[float]:
        """Episodes with the deterministic policy on the evaluation env (rank 0)."""
        env = self.eval_env
        assert env is not None, "only rank 0 evaluates, and it made the environments"
        returns = []
        for _ in range(self.cfg.eval_episodes):
            seed = self.cfg.seed + 1_000_000 + self.counters["eval_episodes"]
            self.counters["eval_episodes"] += 1
            obs = env.reset(seed=seed)
            state = self.agent.init_state(1)
            total = 0.0
            while True:
                with self.updater.autocast():
                    action, state = self.agent.policy(_batch(obs), state, mode=True)
                obs = env.step(self._to_env(action))
                total += float(obs["reward"])
                if obs["is_last"]:
                    break
            returns.append(total)
        return returns

    def _uniform_action(self, like: torch.Tensor) -> torch.Tensor:
        """A uniform random action shaped like ``like`` ``[1, A]``: uniform in [-1, 1]^A, or a uniform one-hot.

        Drawn from (seed, agent step), so a resumed run draws the same actions.
        """
        rng = np.random.default_rng((int(self.cfg.seed), int(self.counters["agent_steps"])))
        return torch.as_tensor(self.act_space.sample(rng), dtype=like.dtype, device=like.device)[None]

    def _to_env(self, action: torch.Tensor) -> np.ndarray:
        values = action[0].float().cpu().numpy()
        if self.act_space.discrete:
            # Exactly one-hot (the straight-through sample is one-hot up to rounding).
            return np.eye(values.shape[0], dtype=np.float32)[int(values.argmax())]
        return np.clip(values, -1.0, 1.0).astype(np.float32)

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Trains until ``cfg.steps`` environment steps, or the episode end after :meth:`stop`; returns a summary.

        Under data parallel every rank runs this loop in step: rank 0 acts and
        sends each step, every rank stores it, earns the same credit and makes
        the same updates (each on its own batch); rank 0 alone logs, evaluates
        and writes.
        """
        cfg = self.cfg
        if self.parallel is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stopped_by_signal)
        logger = MetricsLogger(self.logdir, resume_step=self.env_steps) if self.writer else None
        bar = _progress(cfg, self.env_steps) if self.writer else None
        self.book.start_clock()
        window = MetricsWindow(self.counters["updates"])
        last_return = math.nan
        stopped = False
        try:
            while self.env_steps < cfg.steps:
                step, episode = self._collect() if self.writer else (None, None)
                if self.parallel is not None:
                    step, episode = self.parallel.broadcast_object((step, episode))
                self.replay.add(step)
                self.counters["agent_steps"] += 1
                self.ratio.earn(1, len(self.replay))
                while self.ratio.owed():
                    window.add(self.update())
                if episode is not None:
                    self.counters["episodes"] += 1
                    if logger is not None:
                        last_return = episode["episode/return"]
                        logger.write(self.env_steps, {**episode, "time/wall_s": self.wall_s()})
                        self._maybe_evaluate(logger)
                    self._maybe_checkpoint()
                    # Only between episodes (the simulator's state is not checkpointed); the rest of this
                    # step's bookkeeping still runs below, as in a run that was never stopped.
                    stopped = self.parallel is None and self._stop.is_set()
                if logger is not None:
                    if self.env_steps - self.counters["last_log"] >= cfg.log_every and len(window):
                        self._log_window(logger, window, bar, last_return)
                    # Any step, not only episode ends: the report reads replay alone (so a
                    # run that stops mid-episode still gets its report at the last interval).
                    self._maybe_report(logger)
                if bar is not None:
                    bar.update(self.env_steps - bar.n)
                if stopped:
                    break
            if logger is not None and not stopped:  # a stopped run evaluates when it really ends
                self._maybe_evaluate(logger, force=True)
            self.save()
        except RankLost:
            raise
        except Exception as exc:
            if self.parallel is not None and collective_failed(exc):
                raise RankLost(lost_rank_message(exc)) from exc
            raise
        finally:
            if logger is not None:
                logger.close()
            if bar is not None:
                bar.close()
        return {
            "env_steps": self.env_steps,
            "updates": self.counters["updates"],
            "episodes": self.counters["episodes"],
            "wall_s": self.wall_s(),
            "stopped": stopped,
        }

    def _log_window(self, logger: MetricsLogger, window: MetricsWindow, bar: Any, last_return: float) -> None:
        self.counters["last_log"] = self.env_steps
        summary, seconds = window.close(self.counters["updates"])
        summary["train/env_steps_per_s"] = self.cfg.log_every / seconds
        summary["train/replay_steps"] = len(self.replay)
        summary["train/dropped_batches"] = self.counters["dropped_batches"]
        summary["train/max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        logger.write(self.env_steps, summary)
        if bar is not None:
            bar.set_postfix(updates_per_s=f"{summary['train/updates_per_s']:.2f}", ret=f"{last_return:.1f}")

    def export_metadata(self) -> dict[str, Any]:
        """What an exported policy's sidecar records about the run."""
        return export_metadata(self.cfg, self.env_steps)

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
        """Every ``report_every`` environment steps, the dream report (see :mod:`reverie.agent.dream_report`)."""
        if not self.cfg.report_every or self.env_steps - self.counters["last_report"] < self.cfg.report_every:
            return
        self.counters["last_report"] = self.env_steps
        dream_report(self.agent, self.replay, self.cfg, self.env_steps, logger)

    def _maybe_checkpoint(self) -> None:
        if self.env_steps - self.counters["last_ckpt"] >= self.cfg.checkpoint_every:
            self.save()

    def save(self) -> None:
        """Checkpoint and replay, consistent with each other (taken between episodes; every rank at the same update)."""
        self.book.save(self.agent, self.replay, {"spaces": checkpoint.spaces_to_dict(self.obs_space, self.act_space)})

    def close(self) -> None:
        """Frees rank 0's environments (simulators, renderers) and leaves the process group; idempotent.

        The trainer cannot act afterwards.
        """
        for env in (self.env, self.eval_env):
            if env is not None:
                env.close()
        self.env = self.eval_env = None
        if self.parallel is not None:
            self.parallel.close()


def export_metadata(cfg: DictConfig, env_steps: int) -> dict[str, Any]:
    """What an exported policy's sidecar records about the run."""
    return {"algo": cfg.algo.name, "size": cfg.size.name, "env": cfg.env.name, "obs": cfg.obs, "env_steps": env_steps}


def dream_report(agent: Any, replay: Any, cfg: DictConfig, env_steps: int, logger: MetricsLogger) -> None:
    """The dream report of ``env_steps`` (files to ``logdir/dream/step_<env steps>/``, images and video to TensorBoard,
    the open-loop errors and the report's cost to the metrics).

    It is a view: a report that cannot be made (no episode of
    ``report_context + report_horizon`` steps yet) or fails is skipped with a
    warning and never stops training.
    """
    from .dream_report import training_report

    try:
        metrics = training_report(
            agent,
            replay,
            context=cfg.report_context,
            horizon=cfg.report_horizon,
            sequences=cfg.report_sequences,
            step=env_steps,
            out_dir=Path(cfg.logdir) / "dream" / f"step_{env_steps:08d}",
            writer=logger.tensorboard,
        )
    except Exception as exc:
        warnings.warn(f"dream report at step {env_steps} skipped: {type(exc).__name__}: {exc}", stacklevel=2)
        return
    logger.write(env_steps, metrics)


def _stopped_by_signal(signum: int, frame: Any) -> None:
    # torchrun stops every rank with SIGTERM when one of them fails: end with a message, not silently.
    raise RankLost(
        "stopped by SIGTERM (torchrun stops every rank when one fails, or the job was stopped); the last checkpoint is intact:"
        " rerun the same command to resume from it"
    )


def _progress(cfg: DictConfig, initial: int) -> Any:  # a tqdm bar (untyped), or None
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=initial, unit="step", desc=f"train {cfg.env.name}", dynamic_ncols=True)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Runs (or resumes) the training run described by ``cfg`` (one rank of it under torchrun); no export (see ``reverie train``)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()
