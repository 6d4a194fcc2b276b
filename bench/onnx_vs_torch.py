"""A trained policy evaluated through torch and through its ONNX export, on the same episodes.

Evaluates the deterministic policy of a run's checkpoint for ``--episodes``
episodes with torch (``Dreamer.policy(mode=True)``), exports it with
``--deterministic``, and evaluates the ONNX file with onnxruntime on the same
episode seeds. Prints one JSON line with both means and standard deviations.

    python bench/onnx_vs_torch.py /work/runs/cartpole_swingup/dreamerv3-1m-seed0 --episodes 10
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import emit, machine

from reverie import envs
from reverie.agent.loading import load_trained
from reverie.realtime.export import export_policy
from reverie.realtime.runtime import PolicyRuntime


def episode_returns(env, act, episodes: int, seed: int) -> list[float]:
    returns = []
    for i in range(episodes):
        obs, total, state = env.reset(seed=seed + i), 0.0, None
        while True:
            action, state = act(obs, state)
            obs = env.step(action)
            total += float(obs["reward"])
            if obs["is_last"]:
                break
        returns.append(total)
    return returns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run's logdir or checkpoint.pt")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=2_000_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    agent, cfg, obs_space, _ = load_trained(args.run)
    env = envs.from_config(cfg, args.seed)

    def torch_act(obs, state):
        state = agent.init_state(1) if state is None else state
        action, state = agent.policy({k: np.asarray(v)[None] for k, v in obs.items() if not k.startswith("log/")}, state, mode=True)
        return action[0].numpy(), state

    torch_returns = episode_returns(env, torch_act, args.episodes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.onnx"
        export_policy(
            agent,
            path,
            obs_space=obs_space,
            deterministic=True,
        )
        runtime = PolicyRuntime(path)

        def onnx_act(obs, state):
            if state is None:
                runtime.reset()
            return runtime.step(obs), True

        onnx_returns = episode_returns(env, onnx_act, args.episodes, args.seed)
    emit(
        {
            "name": "onnx_vs_torch",
            "run": str(args.run),
            "env": cfg.env.name,
            "episodes": args.episodes,
            "torch_mean": float(np.mean(torch_returns)),
            "torch_std": float(np.std(torch_returns)),
            "onnx_mean": float(np.mean(onnx_returns)),
            "onnx_std": float(np.std(onnx_returns)),
            "torch_returns": torch_returns,
            "onnx_returns": onnx_returns,
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
