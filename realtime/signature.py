"""The exported policy step's signature: names, carry layout, sidecar format and its validation.

Both sides import this module and nothing heavier: the exporter (torch, learner
side) writes models and sidecars that follow it, and the runtime (robot side,
onnxruntime only) refuses any that do not. It imports numpy and the standard
library only.

A sidecar (``policy.onnx.json``) is a JSON object: ``format``, ``inputs`` and
``outputs`` (``{name, shape, dtype}`` each), ``obs_keys``, ``carry``,
``action``, ``noise``, ``sha256`` and free metadata (algo, size, env, …).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX opset of every export.
OPSET = 17
#: Sidecar format of the fused step: one graph, observation and carry in, action and carry out.
FORMAT = "reverie.policy_step/1"
#: Carry and noise inputs of the fused step, after the observation inputs.
CARRY_INPUTS = ("deter", "stoch", "prev_action", "is_first", "noise")
#: Outputs of the fused step, in order.
OUTPUTS = ("action", "deter_out", "stoch_out")

#: Dtypes a sidecar may name, as numpy types.
DTYPES = {"float32": np.float32, "uint8": np.uint8, "bool": np.bool_, "int64": np.int64}
#: onnxruntime's type strings, as sidecar dtypes.
ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int64)": "int64"}


def obs_input(key: str) -> str:
    """ONNX input name of an observation key (namespaced: an env may have a key named like a carry input)."""
    return f"obs/{key}"


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sidecar_path(model: str | Path) -> Path:
    """Where the sidecar of ``model`` lives: ``model + '.json'``."""
    return Path(f"{model}.json")


def _check_entries(field: str, entries: Any) -> None:
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("shape"), list)):
            raise ValueError(f"sidecar field {field!r} has a malformed entry {entry!r}")
        if not all(isinstance(d, int) and d >= 0 for d in entry["shape"]) or entry.get("dtype") not in DTYPES:
            raise ValueError(f"sidecar field {field!r}: bad shape or dtype in {entry!r}")


def validate_sidecar(meta: Any) -> None:
    """Checks the form of a sidecar.

    Raises:
        ValueError: naming the first field that is missing or of the wrong
            type, or the inputs and outputs the signature needs and the sidecar lacks.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"sidecar must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"sidecar format {meta.get('format')!r} is not {FORMAT!r}")
    fields = {"sha256": str, "obs_keys": list, "action": dict, "inputs": list, "outputs": list, "noise": dict}
    for name, kind in fields.items():
        if not isinstance(meta.get(name), kind):
            raise ValueError(f"sidecar field {name!r} is missing or not a {kind.__name__}")
    if not all(isinstance(k, str) for k in meta["obs_keys"]):
        raise ValueError("sidecar field 'obs_keys' must list strings")
    for field in ("inputs", "outputs"):
        _check_entries(field, meta[field])
    if not isinstance(meta["action"].get("discrete"), bool) or not isinstance(meta["action"].get("dim"), int):
        raise ValueError("sidecar field 'action' needs 'dim' (int) and 'discrete' (bool)")
    if not isinstance(meta["noise"].get("dim"), int):
        raise ValueError("sidecar field 'noise' needs 'dim' (int)")
    declared = {entry["name"] for entry in meta["inputs"]}
    missing = [name for name in (*(obs_input(k) for k in meta["obs_keys"]), *CARRY_INPUTS) if name not in declared]
    if missing:
        raise ValueError(f"sidecar lacks inputs {missing}")
    outputs = {entry["name"] for entry in meta["outputs"]}
    if not set(OUTPUTS) <= outputs:
        raise ValueError(f"sidecar lacks outputs {sorted(set(OUTPUTS) - outputs)}")


def check_session(session: Any, inputs: list[dict[str, Any]], outputs: tuple[str, ...]) -> None:
    """Checks an onnxruntime session against the inputs a sidecar declares and the outputs the signature fixes.

    Args:
        session: an ``onnxruntime.InferenceSession``.
        inputs: the sidecar's input entries (``name``, ``shape``, ``dtype``).
        outputs: the output names, in order.

    Raises:
        ValueError: naming the input whose presence, shape or dtype differs, or the outputs.
    """
    declared = {i["name"]: i for i in inputs}
    actual = {i.name: i for i in session.get_inputs()}
    for name, spec in declared.items():
        if name not in actual:
            raise ValueError(f"input {name!r} of the sidecar is not an input of the model")
        node = actual[name]
        if list(node.shape) != list(spec["shape"]):
            raise ValueError(f"input {name!r}: model shape {node.shape}, sidecar shape {spec['shape']}")
        if ORT_TYPES.get(node.type) != spec["dtype"]:
            raise ValueError(f"input {name!r}: model dtype {node.type}, sidecar dtype {spec['dtype']}")
    missing = set(actual) - set(declared)
    if missing:
        raise ValueError(f"model inputs {sorted(missing)} are missing from the sidecar")
    names = [o.name for o in session.get_outputs()]
    if names != list(outputs):
        raise ValueError(f"model outputs {names}, expected {list(outputs)}")
