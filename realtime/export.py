"""Exports the one-step policy to ONNX with a JSON sidecar describing its signature.

By default the step is written in two parts (format 2 of
:mod:`reverie.realtime.signature`): ``policy.onnx``, the critical path from
observation to action, and ``policy.advance.onnx``, the recurrent advance the
runtime runs after the action is sent; ``split=False`` writes the fused step
of format 1. The sidecar (``policy.onnx.json``) lists input and output names,
shapes and dtypes, the observation keys, action bounds, the noise layout, algo
and size, the opset, the onnxruntime version the export was checked with, and
the sha256 of the model. :class:`reverie.realtime.runtime.PolicyRuntime`
refuses a model that does not match its sidecar.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reverie.agent.dreamer import Dreamer

from .policy_step import AdvanceStep, ObserveStep, PolicyStep
from .signature import (
    ADVANCE_INPUTS,
    ADVANCE_OUTPUTS,
    CARRY_INPUTS,
    FORMAT,
    FORMAT_SPLIT,
    OBSERVE_INPUTS,
    OBSERVE_OUTPUTS,
    OPSET,
    OUTPUTS,
    advance_path,
    obs_input,
    sha256_bytes,
    sidecar_path,
)


class _Part:
    """One graph of an export: its module, example inputs, names, and the file it goes to."""

    def __init__(self, module: nn.Module, args: tuple[torch.Tensor, ...], inputs: list[str], outputs: tuple[str, ...], path: Path) -> None:
        self.module, self.args, self.inputs, self.outputs, self.path = module, args, inputs, outputs, path
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                buffer,  # type: ignore[arg-type]  # torch types f as a path; the TorchScript exporter writes a BytesIO too
                input_names=inputs,
                output_names=list(outputs),
                opset_version=OPSET,
                dynamo=False,
            )
            self.want = module(*args)
        self.data = buffer.getvalue()

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        """The sidecar's ``inputs`` and ``outputs`` of this graph."""
        entry = lambda n, t: {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}  # noqa: E731
        return {
            "inputs": [entry(n, t) for n, t in zip(self.inputs, self.args)],
            "outputs": [entry(n, t) for n, t in zip(self.outputs, self.want)],
        }


def _parts(step: PolicyStep, obs_args: list[torch.Tensor], path: Path, split: bool) -> list[_Part]:
    """The graphs of the export: the fused step, or the observe and advance parts (observe first)."""
    obs_names = [obs_input(k) for k in step.obs_keys]
    rssm = step.rssm
    deter, stoch, action = torch.zeros(1, rssm.deter), torch.zeros(1, *rssm.stoch_shape), torch.zeros(1, step.act_dim)
    noise = torch.full((1, step.noise_dim), 0.5)
    if not split:
        args = (*obs_args, deter, stoch, action, torch.ones(1, dtype=torch.bool), noise)
        return [_Part(step, args, [*obs_names, *CARRY_INPUTS], OUTPUTS, path)]
    post_deter = torch.zeros(1, rssm.post_deter.out_features)
    return [
        _Part(ObserveStep(step), (*obs_args, deter, post_deter, noise), [*obs_names, *OBSERVE_INPUTS], OBSERVE_OUTPUTS, path),
        _Part(AdvanceStep(step), (deter, stoch, action), list(ADVANCE_INPUTS), ADVANCE_OUTPUTS, advance_path(path)),
    ]


def export_policy(
    agent: Dreamer,
    path: str | Path,
    *,
    obs_space: dict[str, Any],
    deterministic: bool = False,
    split: bool = True,
    quantize: str | None = None,
    calibration: list[dict[str, np.ndarray]] | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes ``path`` (ONNX; with ``split`` also ``policy.advance.onnx`` beside it) and ``path + '.json'``; returns the sidecar.

    Args:
        agent: the trained agent (on any device; exported from a CPU copy).
        path: output ONNX file (the observe part when ``split``).
        obs_space: the environment's observation spaces (the model's keys are
            taken from it).
        deterministic: export the mode policy (deployment) instead of sampling.
        split: two parts, observe and advance (format 2); False writes the
            fused step (format 1).
        quantize: ``"int8"``: int8 matrix products, and int8 convolutions
            when ``calibration`` is given (``reverie.realtime.quantize``;
            recorded in the sidecar). The round trip then checks finiteness,
            not closeness to torch: judging the deviation is
            ``quantize.export_quantized``'s job.
        calibration: with ``quantize``, unbatched observations of the task to
            calibrate the convolutions' int8 activations on (pixel policies);
            None leaves the convolutions fp32.
        metadata: extra sidecar fields (algo, size, env, checkpoint …).

    Raises:
        RuntimeError: when onnxruntime's outputs differ from torch's, or the
            weights give non-finite outputs (nothing is written then).
    """
    import onnxruntime

    path = Path(path)
    # A CPU copy of the plain (uncompiled) modules: the tracer cannot go
    # through torch.compile, and the agent itself may live on a GPU.
    with agent.eager():
        step = copy.deepcopy(PolicyStep(agent, deterministic=deterministic)).cpu().eval()
    keys = step.obs_keys
    obs_args = [torch.zeros(1, *obs_space[k].shape, dtype=getattr(torch, obs_space[k].dtype.name)) for k in keys]
    parts = _parts(step, obs_args, path, split)
    if quantize is not None:
        from .quantize import MIN_STATIC_CHANNELS, OPS, STATIC_OPS, convolutions_to_quantize, quantize_bytes

        observations = len(calibration) if calibration else 0
        static = sum(len(convolutions_to_quantize(part.data)) for part in parts) if observations else 0
        for part in parts:
            part.data = quantize_bytes(part.data, quantize, calibration)
    rssm = step.rssm
    sidecar = {
        "format": FORMAT_SPLIT if split else FORMAT,
        **parts[0].describe(),
        "obs_keys": step.obs_keys,
        "carry": {"deter": rssm.deter, "stoch": rssm.stoch, "classes": rssm.classes, "latent": rssm.latent},
        "action": {"dim": step.act_dim, "discrete": step.discrete, "low": 0.0 if step.discrete else -1.0, "high": 1.0},
        "noise": {
            "dim": step.noise_dim,
            "latent": rssm.noise_dim,
            "layout": "uniform [0,1): latents [:L]; continuous actions Box-Muller u1 [L:L+A], u2 [L+A:L+2A]"
            " (exploration noise: u1 [L+2A:L+3A], u2 [L+3A:L+4A]); discrete action [L]",
        },
        "deterministic": deterministic,
        "opset": OPSET,
        "onnxruntime_tested": onnxruntime.__version__,
        "torch": torch.__version__,
        "sha256": sha256_bytes(b"".join(part.data for part in parts)),
        **(metadata or {}),
    }
    if quantize is not None:
        sidecar["quantize"] = {"mode": quantize, "method": "onnxruntime dynamic quantization", "ops": list(OPS)}
        if static:
            sidecar["quantize"].update(
                method=f"onnxruntime dynamic quantization (matrix products); static QDQ quantization of the convolutions"
                f" with {MIN_STATIC_CHANNELS} input channels or more (per-channel int8 weights, uint8 activations,"
                " MinMax ranges over the calibration observations)",
                ops=[*OPS, *STATIC_OPS],
                static_convolutions=static,
                calibration_observations=observations,
            )
    if split:
        observe, advance = parts
        sidecar["observe"] = {"bytes": len(observe.data), "sha256": sha256_bytes(observe.data)}
        sidecar["advance"] = {"bytes": len(advance.data), "sha256": sha256_bytes(advance.data), **advance.describe()}
    # Every file goes to a temporary beside its target and replaces it only
    # once the model passed the round trip: a failed export (e.g. NaN weights)
    # leaves the previous model and sidecar as they were.
    path.parent.mkdir(parents=True, exist_ok=True)
    side_path = sidecar_path(path)
    temporary = lambda target: target.with_name(f"{target.name}.tmp")  # noqa: E731
    tmp_side = temporary(side_path)
    try:
        for part in parts:
            temporary(part.path).write_bytes(part.data)
            _check_roundtrip(temporary(part.path), part, label=part.path, exact=quantize is None)
        tmp_side.write_text(json.dumps(sidecar, indent=1))
        # Sidecar first, the advance part next, the model last: once the new
        # model is in place its sidecar already is, so a reader that takes the
        # model and then its sidecar (WeightPublisher.publish) never pairs a
        # new model with an old sidecar. Between the renames an old model has
        # a new sidecar (or parts of two exports meet); every reader checks the
        # sidecar's hashes against the bytes (PolicyRuntime, decode_weights)
        # and refuses such a pair with a clear error.
        os.replace(tmp_side, side_path)
        for part in reversed(parts):
            os.replace(temporary(part.path), part.path)
        if not split:
            advance_path(path).unlink(missing_ok=True)  # no stale advance part beside a fused model
    finally:
        for part in parts:
            temporary(part.path).unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return sidecar


def _check_roundtrip(path: Path, part: _Part, *, label: str | Path | None = None, exact: bool = True) -> None:
    """Runs the file once in onnxruntime and compares with torch (catches a broken export early).

    ``label`` names the export in the error (``path`` may be a temporary file);
    ``exact=False`` (a quantized model) checks only that the outputs are finite.
    """
    import onnxruntime

    label = path if label is None else label
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(part.inputs, part.args)})
    for name, g, w in zip(part.outputs, got, part.want):
        if not np.isfinite(w.numpy()).all():
            raise RuntimeError(f"ONNX export of {label}: output {name} is not finite in torch (NaN or inf in the weights)")
        if not np.isfinite(g).all():
            raise RuntimeError(f"ONNX export of {label}: output {name} is not finite in onnxruntime")
        if exact and not np.allclose(g, w.numpy(), atol=1e-4):
            raise RuntimeError(f"ONNX export of {label}: output {name} differs from torch by {np.abs(g - w.numpy()).max()}")
