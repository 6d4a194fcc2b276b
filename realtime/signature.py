"""The exported policy step's signature: names, carry layout, sidecar format and its validation.

Both sides import this module and nothing heavier: the exporter (torch, learner
side) writes models and sidecars that follow it, and the runtime (robot side,
onnxruntime only) refuses any that do not. It imports numpy and the standard
library only.

Two formats, told apart by the sidecar's ``format``:

* ``reverie.policy_step/1`` (fused): one graph, ``(obs…, deter, stoch,
  prev_action, is_first, noise) → (action, deter_out, stoch_out)``.
* ``reverie.policy_step/2`` (two parts): the *observe* part, the control
  step's critical path, ``(obs…, deter, post_deter, noise) → (action,
  stoch_out)`` (encoder, posterior, actor head) in ``policy.onnx``, and the
  *advance* part, ``(deter, stoch, action) → (deter_out, post_deter_out)``
  (the recurrent step h_{t+1} = f(h_t, z_t, a_t) and the posterior's
  projection of h_{t+1}, which need nothing from the next observation) in
  ``policy.advance.onnx``. The runtime runs the advance after the action is
  sent, while the loop waits for the next tick.

A sidecar (``policy.onnx.json``) is a JSON object: ``format``, ``inputs`` and
``outputs`` (``{name, shape, dtype}`` each; of the observe part in format 2),
``obs_keys``, ``carry``, ``action``, ``noise``, ``sha256`` and free metadata
(algo, size, env, …). Format 2 adds ``observe`` (``bytes``, ``sha256``) and
``advance`` (``bytes``, ``sha256``, ``inputs``, ``outputs``). ``sha256`` is
always the hash of the model's bytes: of the one file, or of the observe
part's bytes followed by the advance part's (which is also what the weight
channel sends, as one payload).
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

#: Sidecar format of the two-part step (observe + advance).
FORMAT_SPLIT = "reverie.policy_step/2"
#: Formats the runtime loads.
FORMATS = (FORMAT, FORMAT_SPLIT)
#: Carry and noise inputs of the observe part, after the observation inputs.
OBSERVE_INPUTS = ("deter", "post_deter", "noise")
#: Outputs of the observe part, in order.
OBSERVE_OUTPUTS = ("action", "stoch_out")
#: Inputs of the advance part, in order.
ADVANCE_INPUTS = ("deter", "stoch", "action")
#: Outputs of the advance part, in order.
ADVANCE_OUTPUTS = ("deter_out", "post_deter_out")
#: Which observe-part input or output each advance input and output must match in shape:
#: the halves of one export fit together, halves of different exports are refused by name.
HALVES_MATCH = {
    ("input", "deter"): "deter",
    ("input", "stoch"): "stoch_out",
    ("input", "action"): "action",
    ("output", "deter_out"): "deter",
    ("output", "post_deter_out"): "post_deter",
}

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


def advance_path(model: str | Path) -> Path:
    """Where the advance part of a two-part ``model`` lives: ``policy.onnx`` → ``policy.advance.onnx``."""
    model = Path(model)
    return model.with_name(f"{model.stem}.advance{model.suffix}")


def is_split(meta: dict[str, Any]) -> bool:
    """Whether a (validated) sidecar describes a two-part model."""
    return meta.get("format") == FORMAT_SPLIT


def read_payload(model: str | Path, meta: dict[str, Any]) -> bytes:
    """The model's bytes as the sidecar's ``sha256`` covers them and the weight channel sends them.

    The one file, or for a two-part model the observe part followed by the advance part.
    """
    data = Path(model).read_bytes()
    return data + advance_path(model).read_bytes() if is_split(meta) else data


def split_payload(payload: bytes | memoryview, meta: dict[str, Any]) -> tuple[memoryview, memoryview | None]:
    """``(observe part, advance part)`` of a payload (``(payload, None)`` for a fused model); views, no copies.

    Raises:
        ValueError: when the part sizes the sidecar gives do not add up to the payload.
    """
    view = memoryview(payload)
    if not is_split(meta):
        return view, None
    first, second = meta["observe"]["bytes"], meta["advance"]["bytes"]
    if first + second != len(view):
        raise ValueError(f"the two parts' sizes in the sidecar ({first} + {second} bytes) do not add up to the model's {len(view)} bytes")
    return view[:first], view[first:]


def write_payload(payload: bytes | memoryview, meta: dict[str, Any], model: str | Path) -> None:
    """Writes a payload (from the weight channel) as the file(s) of ``model``: one, or the two parts."""
    observe, advance = split_payload(payload, meta)
    Path(model).write_bytes(observe)
    if advance is not None:
        advance_path(model).write_bytes(advance)


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
    if meta.get("format") not in FORMATS:
        raise ValueError(f"sidecar format {meta.get('format')!r} is not one of {list(FORMATS)}")
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
    split = is_split(meta)
    carry_inputs, out_names = (OBSERVE_INPUTS, OBSERVE_OUTPUTS) if split else (CARRY_INPUTS, OUTPUTS)
    declared = {entry["name"] for entry in meta["inputs"]}
    missing = [name for name in (*(obs_input(k) for k in meta["obs_keys"]), *carry_inputs) if name not in declared]
    if missing:
        raise ValueError(f"sidecar lacks inputs {missing}")
    outputs = {entry["name"] for entry in meta["outputs"]}
    if not set(out_names) <= outputs:
        raise ValueError(f"sidecar lacks outputs {sorted(set(out_names) - outputs)}")
    if split:
        _validate_halves(meta)


def _validate_halves(meta: dict[str, Any]) -> None:
    """Format 2: the parts' sizes and hashes, the advance part's signature, and that the halves fit together."""
    for part in ("observe", "advance"):
        entry = meta.get(part)
        if not (
            isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and entry["bytes"] > 0 and isinstance(entry.get("sha256"), str)
        ):
            raise ValueError(f"sidecar field {part!r} needs 'bytes' (a positive int) and 'sha256' (str)")
    advance = meta["advance"]
    for field in ("inputs", "outputs"):
        if not isinstance(advance.get(field), list):
            raise ValueError(f"sidecar field 'advance' needs {field!r} (a list)")
        _check_entries(f"advance.{field}", advance[field])
    names = {"input": [e["name"] for e in advance["inputs"]], "output": [e["name"] for e in advance["outputs"]]}
    if names["input"] != list(ADVANCE_INPUTS) or names["output"] != list(ADVANCE_OUTPUTS):
        raise ValueError(
            f"sidecar field 'advance': inputs {names['input']} and outputs {names['output']},"
            f" expected {list(ADVANCE_INPUTS)} and {list(ADVANCE_OUTPUTS)}"
        )
    observe = {e["name"]: e for e in (*meta["inputs"], *meta["outputs"])}
    for (kind, name), other in HALVES_MATCH.items():
        entry = next(e for e in advance[f"{kind}s"] if e["name"] == name)
        if entry["shape"] != observe[other]["shape"] or entry["dtype"] != observe[other]["dtype"]:
            raise ValueError(
                f"the two halves do not match: advance {kind} {name!r} is {entry['dtype']} {entry['shape']},"
                f" observe {other!r} is {observe[other]['dtype']} {observe[other]['shape']}"
            )


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
