"""Writes the tiny exported policies that the robot-side tests load (tests/robot_models/).

The robot-side tests also run where torch is not installed (``make
test-robot``), so they cannot export a policy themselves: they load these
committed files. ``tests/test_export.py::test_committed_robot_models_match_the_exporter``
exports them again from the same seeded agents and fails when the exporter's
signature or numbers have drifted; then run

    .venv/bin/python tests/make_robot_models.py

and commit the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Where the committed models live.
FOLDER = HERE / "robot_models"
#: name → (env, obs, two parts): each is TINY (conftest). ``vector_fused`` is format 1, which must keep loading.
MODELS = {
    "vector": ("fake/vector", "vector", True),
    "vector_fused": ("fake/vector", "vector", False),
    "pixels": ("fake/pixels", "pixels", True),
}


def export_all(folder: Path = FOLDER) -> dict[str, dict]:
    """Exports every model of ``MODELS`` into ``folder``; returns the sidecars by name."""
    sys.path.insert(0, str(HERE))
    from conftest import TINY, make_agent

    from reverie import envs
    from reverie.realtime.export import export_policy

    folder.mkdir(parents=True, exist_ok=True)
    sidecars = {}
    for name, (env_name, obs, split) in MODELS.items():
        env = envs.make(env_name, obs=obs, seed=0)
        agent = make_agent(env, overrides=(*TINY, f"obs={obs}"))
        meta = {"env": env_name, "obs": obs, "algo": "dreamerv3", "size": "tiny"}
        sidecars[name] = export_policy(agent, folder / f"{name}.onnx", obs_space=env.obs_space, split=split, metadata=meta)
    return sidecars


if __name__ == "__main__":
    for name, sidecar in export_all().items():
        print(f"{name}: sha256 {sidecar['sha256'][:16]}…")
