"""``reverie eval``: an exported policy in the fixed-rate control loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from reverie import envs

from .loop import ControlLoop, default_spin_s
from .runtime import PolicyRuntime


def _env_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The environment settings a run recorded in the sidecar (``env_config``: repeat, time limit, image size, options)."""
    config = meta.get("env_config") or {}
    settings: dict[str, Any] = {"action_repeat": config.get("action_repeat"), "time_limit": config.get("time_limit")}
    if config.get("size"):
        settings["size"] = (int(config["size"]), int(config["size"]))
    return {**settings, **(config.get("options") or {})}


def evaluate_policy(
    policy_path: str | Path,
    *,
    env: str | None = None,
    rate_hz: float = 50.0,
    episodes: int | None = 10,
    steps: int | None = None,
    seconds: float | None = None,
    robot: bool = False,
    safe_action: str = "hold",
    threads: int = 1,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Runs the policy in a :class:`ControlLoop` and summarises returns and timing.

    Args:
        policy_path: the ONNX file (its sidecar beside it).
        env: environment name; default the one recorded in the sidecar, with
            the settings the run recorded there (``env_config``: action
            repeat, time limit, image size, options) when it has them.
        rate_hz: control rate.
        episodes, steps, seconds: stop at whichever comes first.
        robot: drive a MuJoCo robot stand-in paced in wall-clock time.
        safe_action: ``hold`` or ``zero``.
        threads: onnxruntime intra-op threads.
        seed: environment and noise seed.
        out: folder for ``eval.json`` and ``latency.png``.

    Raises:
        ValueError: for a bad policy file, sidecar or environment.
    """
    runtime = PolicyRuntime(policy_path, threads=threads, seed=seed)
    name = env or runtime.meta.get("env")
    if not name:
        raise ValueError("the sidecar records no env; pass env=NAME")
    obs_kind = runtime.meta.get("obs", "vector")
    if robot:
        from reverie.envs.robot import MuJoCoRobot

        source: Any = MuJoCoRobot(name, obs=obs_kind, seed=seed)
    else:
        source = envs.make(name, obs=obs_kind, seed=seed, **(_env_settings(runtime.meta) if env is None else {}))
    try:
        runtime.check_spaces(source.obs_space, source.action_space if robot else source.act_space)
    except ValueError:
        if hasattr(source, "close"):
            source.close()
        raise
    if episodes is None and steps is None and seconds is None:
        episodes = 10
    loop = ControlLoop(source, runtime, rate_hz=rate_hz, safe_action=safe_action, spin_s=default_spin_s(rate_hz))
    stats = loop.run(steps=steps, seconds=seconds, episodes=episodes)
    summary: dict[str, Any] = {
        "policy": str(policy_path),
        "env": name,
        "robot": robot,
        "rate_hz": rate_hz,
        "episodes": stats.episodes,
        "return_mean": float(np.mean(stats.episode_returns)) if stats.episode_returns else None,
        "return_std": float(np.std(stats.episode_returns)) if stats.episode_returns else None,
        "returns": list(stats.episode_returns),
        **stats.summary(),
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        try:
            stats.histogram_png(out / "latency.png")
        except ImportError as exc:  # the robot-only install has no matplotlib: the numbers are in eval.json
            print(f"reverie eval: no latency.png ({exc.name} is not installed: pip install matplotlib)", file=sys.stderr)
        (out / "eval.json").write_text(json.dumps(summary, indent=1))
    if hasattr(source, "close"):
        source.close()
    return summary
