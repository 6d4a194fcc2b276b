"""The observation and action spaces of a task as a JSON file, so a learner needs no environment to know them.

``reverie spaces [overrides…]`` writes the file where the environment (or the
robot) is; ``reverie learner env.spaces=FILE`` reads it (docs/design.md,
"The learner without an environment"). Pure Python and numpy: the robot side
writes it too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from reverie.envs.base import Space

FORMAT = 1


def _bound(value: Any) -> float | None:
    return None if value is None else float(value)


def spaces_to_json(obs_space: dict[str, Space], act_space: Space) -> dict[str, Any]:
    """A JSON-ready description of the spaces."""
    describe = lambda s: {  # noqa: E731
        "dtype": s.dtype.name,
        "shape": list(s.shape),
        "low": _bound(s.low),
        "high": _bound(s.high),
        "discrete": bool(s.discrete),
    }
    return {"format": FORMAT, "obs": {k: describe(v) for k, v in obs_space.items()}, "act": describe(act_space)}


def spaces_from_json(data: Any, source: str = "spaces") -> tuple[dict[str, Space], Space]:
    """Inverse of :func:`spaces_to_json`.

    Raises:
        ValueError: for a description that is not one (names ``source`` and what is wrong).
    """

    def make(name: str, d: Any) -> Space:
        if not isinstance(d, dict) or not {"dtype", "shape"} <= set(d):
            raise ValueError(f"{source}: space {name!r} needs dtype and shape, got {d!r}")
        try:
            space = Space(d["dtype"], tuple(d["shape"]), d.get("low"), d.get("high"), bool(d.get("discrete", False)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: space {name!r} is not valid ({exc})") from exc
        if any(x < 0 for x in space.shape) or any(b is not None and not math.isfinite(float(b)) for b in (space.low, space.high)):
            raise ValueError(f"{source}: space {name!r} has a negative size or a non-finite bound")
        return space

    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("obs"), dict) or "act" not in data:
        raise ValueError(f"{source} is not a spaces file of format {FORMAT} (`reverie spaces` writes one)")
    obs = {str(k): make(k, v) for k, v in data["obs"].items()}
    missing = {"reward", "is_first", "is_last", "is_terminal"} - set(obs)
    if missing:
        raise ValueError(f"{source}: the observation spaces lack {sorted(missing)}")
    return obs, make("act", data["act"])


def read_spaces(path: str | Path) -> tuple[dict[str, Space], Space]:
    """The spaces in the file at ``path``.

    Raises:
        ValueError: when it is missing, not JSON, or not a spaces description.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the spaces file {path}: {exc}") from exc
    return spaces_from_json(data, source=str(path))
