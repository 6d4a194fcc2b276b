"""What each value of a replay step means, so that data can be checked by meaning and not only by form.

A replay step holds the observation, the action sent after it and the model's
latent state after observing it (``deter`` as float16, ``stoch`` as class
indices). Dtypes and shapes say little: a class index of 200 in a model of
4 classes, a flag stored as byte 2 or an action of 3e38 all have the right
form and would crash or poison the update. :class:`StepSpec` knows, per key,
what a valid value is:

* flags (bool keys): bytes 0 or 1;
* ``is_terminal`` implies ``is_last``;
* floats (sensors, ``reward``, ``deter``): finite, with magnitude at most
  ``magnitude`` (generous: symlog copes with large values, but 1e37 is no
  measurement);
* continuous actions: within ``[action_low, action_high]``; discrete ones:
  one-hot rows of 0/1 (or all zeros, as a recorder writes after ``is_last``);
* ``stoch``: class indices below ``classes``.

The same spec checks a message at the learner's door (:meth:`check`, the
first violation with its reason) and whole replays or sampled batches
(:meth:`bad_rows`, a mask over the leading axes). Pure numpy: the robot side
imports it too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .base import Space

#: Keys of a replay step that are not observation keys.
EXTRA_KEYS = ("action", "deter", "stoch")
#: Default bound on the magnitude of float values.
DEFAULT_MAGNITUDE = 1e6
#: Reasons a value is refused, in the order they are checked.
REASONS = ("bool", "nonfinite", "magnitude", "action", "latent", "episode")

Schema = dict[str, tuple[str, tuple[int, ...]]]


class StepError(ValueError):
    """A value outside its meaning; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """The form (``schema``) and meaning of one replay step.

    Args:
        schema: ``{key: (dtype name, shape)}`` of one step.
        discrete: the action is one-hot.
        action_low: lower bound of continuous actions.
        action_high: upper bound of continuous actions.
        classes: class count of the categorical latents (1 for a Gaussian
            latent, which replay stores as zeros).
        magnitude: largest magnitude a float value may have.
    """

    schema: Schema
    discrete: bool = False
    action_low: float = -1.0
    action_high: float = 1.0
    classes: int = 1
    magnitude: float = DEFAULT_MAGNITUDE

    @classmethod
    def build(
        cls,
        obs_space: dict[str, Space],
        act_space: Space,
        *,
        deter: int,
        stoch: int,
        classes: int,
        magnitude: float = DEFAULT_MAGNITUDE,
    ) -> StepSpec:
        """The spec of the replay steps of an environment and a model.

        Args:
            obs_space: the environment's observation spaces (``log/`` keys are left out).
            act_space: its action space (continuous actions in [-1, 1] unless
                its bounds say otherwise).
            deter: size of the recurrent state.
            stoch: number of latents.
            classes: classes per latent (1 for a Gaussian latent).
            magnitude: largest magnitude a float value may have.
        """
        schema = {k: (np.dtype(s.dtype).name, tuple(s.shape)) for k, s in obs_space.items() if not k.startswith("log/")}
        schema["action"] = (np.dtype(act_space.dtype).name, tuple(act_space.shape))
        schema["deter"] = ("float16", (int(deter),))
        schema["stoch"] = ("uint8", (int(stoch),))
        low = -1.0 if act_space.low is None else float(act_space.low)
        high = 1.0 if act_space.high is None else float(act_space.high)
        return cls(schema, bool(act_space.discrete), low, high, max(1, int(classes)), float(magnitude))

    @property
    def obs_keys(self) -> list[str]:
        """Keys of the observation (all but action and latents)."""
        return [k for k in self.schema if k not in EXTRA_KEYS]

    @property
    def checked_keys(self) -> list[str]:
        """Keys some rule reads: all but the uint8 images, which may hold any byte (``stoch`` is checked)."""
        return [k for k, (dtype, _) in self.schema.items() if dtype != "uint8" or k == "stoch"]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for files next to a replay)."""
        out = dataclasses.asdict(self)
        out["schema"] = {k: [d, list(s)] for k, (d, s) in self.schema.items()}
        return out

    # ---------------------------------------------------------------- checks
    def violations(self, arrays: dict[str, np.ndarray], lead: int = 1) -> dict[str, np.ndarray]:
        """``{"reason key": mask}`` of the rows that break a rule; masks have the ``lead`` leading axes' shape.

        ``arrays`` must already have the :attr:`checked_keys` with the schema's
        dtypes and shapes after ``lead`` leading axes (``[T]`` for a message,
        ``[B, L]`` for a batch).
        Keys without violations are left out.
        """
        out: dict[str, np.ndarray] = {}

        def add(reason: str, key: str, mask: np.ndarray) -> None:
            rows = np.asarray(mask, bool)
            if rows.ndim > lead:  # any element of a row (asarray: any() is typed as maybe a scalar)
                rows = np.asarray(rows.reshape(rows.shape[:lead] + (-1,)).any(-1))
            if rows.any():
                out[f"{reason} {key}"] = rows

        for key in self.checked_keys:
            dtype, value = self.schema[key][0], arrays[key]
            if dtype == "bool":
                add("bool", key, value.view(np.uint8) > 1)
            elif value.dtype.kind == "f" and key != "action":
                finite = np.isfinite(value)
                add("nonfinite", key, ~finite)
                if self.magnitude < float(np.finfo(value.dtype).max):  # float16 (deter) cannot even hold 1e6
                    add("magnitude", key, finite & (np.abs(value) > self.magnitude))
            elif value.dtype.kind in "iu" and key not in ("stoch",) and value.dtype.itemsize > 1:
                add("magnitude", key, np.abs(value.astype(np.float64)) > self.magnitude)
        action = arrays["action"].astype(np.float64)
        if self.discrete:
            binary = (action == 0) | (action == 1)
            add("action", "action", ~binary.all(-1) | (action.sum(-1) > 1))
        else:
            add("action", "action", ~((action >= self.action_low) & (action <= self.action_high)))  # NaN fails too
        add("latent", "stoch", arrays["stoch"] >= self.classes)
        if "is_terminal" in arrays and "is_last" in arrays:
            add(
                "episode", "is_terminal", arrays["is_terminal"].view(np.uint8).astype(bool) & ~arrays["is_last"].view(np.uint8).astype(bool)
            )
        return out

    def bad_rows(self, arrays: dict[str, np.ndarray], lead: int = 1) -> np.ndarray:
        """Mask over the ``lead`` leading axes: rows with any violation."""
        shape = next(iter(arrays.values())).shape[:lead]
        mask = np.zeros(shape, bool)
        for m in self.violations(arrays, lead).values():
            mask |= m
        return mask

    def check(self, arrays: dict[str, np.ndarray]) -> None:
        """Raises :class:`StepError` for the first violation in a chunk ``{key: [T, ...]}``.

        Besides the per-row rules, a chunk is one piece of one episode:
        ``is_last`` may only be set on its last row (the recorder sends a
        chunk at every episode end).
        """
        found = self.violations(arrays)
        for reason in REASONS:
            for name, mask in found.items():
                if name.split(" ", 1)[0] == reason:
                    key = name.split(" ", 1)[1]
                    raise StepError(reason, f"{key!r} at step {int(np.argmax(mask))}: {_describe(reason, self)}")
        if "is_last" in arrays and arrays["is_last"][:-1].view(np.uint8).any():
            raise StepError("episode", f"'is_last' before the chunk's last step (step {int(np.argmax(arrays['is_last'][:-1]))})")


def _describe(reason: str, spec: StepSpec) -> str:
    return {
        "bool": "a flag that is neither 0 nor 1",
        "nonfinite": "a non-finite value",
        "magnitude": f"a value beyond ±{spec.magnitude:g}",
        "action": "a one-hot action that is not one-hot"
        if spec.discrete
        else f"an action outside [{spec.action_low:g}, {spec.action_high:g}]",
        "latent": f"a class index ≥ {spec.classes}",
        "episode": "is_terminal without is_last",
    }[reason]
