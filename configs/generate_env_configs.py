"""Writes one ``env/`` config per DeepMind Control task, listed gymnasium id and Atari 100k game, and ``env/crafter``.

Run after upgrading dm-control or adding gym ids:
``python -m reverie.configs.generate_env_configs``.
"""

from __future__ import annotations

from pathlib import Path

from reverie.envs.atari import ATARI100K_GAMES

GYM_IDS = [
    "Pendulum-v1",
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCarContinuous-v0",
    "LunarLander-v3",
    "Ant-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Pusher-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
]
FAKES = ["vector", "pixels", "discrete"]
#: Frames per agent step on Atari (DreamerV2/V3); reverie.envs.atari max-pools
#: the last two frames of each repeat.
ATARI_REPEAT = 4


def write(root: Path, family: str, task: str, extra: str = "") -> None:
    """Writes ``env/FAMILY/TASK.yaml`` (``extra``: further lines)."""
    path = root / "env" / family / f"{task}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"name: {family}/{task}\n{extra}")


def main() -> None:
    """Writes every env preset."""
    from dm_control import suite

    root = Path(__file__).parent
    for domain, task in suite.ALL_TASKS:
        write(root, "dmc", f"{domain}_{task}")
    for env_id in GYM_IDS:
        write(root, "gym", env_id)
    for variant in FAKES:
        write(root, "fake", variant)
    for game in ATARI100K_GAMES:
        write(root, "atari", game, f"action_repeat: {ATARI_REPEAT}\n")
    # env=crafter: the reward task (crafter/noreward via env.name=crafter/noreward).
    (root / "env" / "crafter.yaml").write_text("name: crafter/reward\naction_repeat: 1\n")


if __name__ == "__main__":
    main()
