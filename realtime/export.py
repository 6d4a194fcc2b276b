"""Exports the one-step policy to ONNX with a JSON sidecar describing its signature.

The sidecar (``policy.onnx.json``) lists input and output names, shapes and
dtypes, the observation keys, action bounds, the noise layout, algo and size,
the opset, the onnxruntime version the export was checked with, and the
sha256 of the ONNX file. :class:`reverie.realtime.runtime.PolicyRuntime`
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

from reverie.agent.dreamer import Dreamer

from .policy_step import PolicyStep
from .signature import CARRY_INPUTS, FORMAT, OPSET, OUTPUTS, obs_input, sha256_bytes, sidecar_path


def example_inputs(step: PolicyStep, obs_shapes: dict[str, tuple[int, ...]], obs_dtypes: dict[str, str]) -> tuple[torch.Tensor, ...]:
    """Zero inputs of batch 1 in the signature's order."""
    rssm = step.rssm
    obs = [torch.zeros(1, *obs_shapes[k], dtype=getattr(torch, obs_dtypes[k])) for k in step.obs_keys]
    return (
        *obs,
        torch.zeros(1, rssm.deter),
        torch.zeros(1, *rssm.stoch_shape),
        torch.zeros(1, step.act_dim),
        torch.ones(1, dtype=torch.bool),
        torch.full((1, step.noise_dim), 0.5),
    )


def export_policy(
    agent: Dreamer,
    path: str | Path,
    *,
    obs_space: dict[str, Any],
    deterministic: bool = False,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Writes ``path`` (ONNX) and ``path + '.json'`` (the sidecar); returns the sidecar.

    Args:
        agent: the trained agent (on any device; exported from a CPU copy).
        path: output ONNX file.
        obs_space: the environment's observation spaces (the model's keys are
            taken from it).
        deterministic: export the mode policy (deployment) instead of sampling.
        metadata: extra sidecar fields (algo, size, env, checkpoint …).
    """
    import onnxruntime

    path = Path(path)
    # A CPU copy of the plain (uncompiled) modules: the tracer cannot go
    # through torch.compile, and the agent itself may live on a GPU.
    with agent.eager():
        step = copy.deepcopy(PolicyStep(agent, deterministic=deterministic)).cpu().eval()
    keys = step.obs_keys
    args = example_inputs(step, {k: tuple(obs_space[k].shape) for k in keys}, {k: obs_space[k].dtype.name for k in keys})
    names = [*(obs_input(k) for k in step.obs_keys), *CARRY_INPUTS]
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(step, args, buffer, input_names=names, output_names=list(OUTPUTS), opset_version=OPSET, dynamo=False)
    data = buffer.getvalue()
    with torch.no_grad():
        outs = step(*args)
    describe = lambda n, t: {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}  # noqa: E731
    rssm = step.rssm
    sidecar = {
        "format": FORMAT,
        "inputs": [describe(n, t) for n, t in zip(names, args)],
        "outputs": [describe(n, t) for n, t in zip(OUTPUTS, outs)],
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
        "sha256": sha256_bytes(data),
        **(metadata or {}),
    }
    # Both files go to temporaries beside their targets and replace them only
    # once the model passed the round trip: a failed export (e.g. NaN weights)
    # leaves the previous model and sidecar as they were.
    path.parent.mkdir(parents=True, exist_ok=True)
    side_path = sidecar_path(path)
    tmp_model, tmp_side = path.with_name(f"{path.name}.tmp"), side_path.with_name(f"{side_path.name}.tmp")
    try:
        tmp_model.write_bytes(data)
        tmp_side.write_text(json.dumps(sidecar, indent=1))
        _check_roundtrip(tmp_model, step, args, names, label=path)
        # Sidecar first, model second: once the new model is in place its
        # sidecar already is, so a reader that takes the model and then its
        # sidecar (WeightPublisher.publish) never pairs a new model with an
        # old sidecar. Between the two renames an old model has a new sidecar;
        # every reader checks the sidecar's sha256 against the model bytes
        # (PolicyRuntime, decode_weights) and refuses that pair with a clear
        # error. A reader that takes the sidecar first can straddle both
        # renames; the same hash check refuses it.
        os.replace(tmp_side, side_path)
        os.replace(tmp_model, path)
    finally:
        tmp_model.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
    return sidecar


def _check_roundtrip(
    path: Path, step: PolicyStep, args: tuple[torch.Tensor, ...], names: list[str], *, label: str | Path | None = None
) -> None:
    """Runs the file once in onnxruntime and compares with torch (catches a broken export early).

    ``label`` names the export in the error (``path`` may be a temporary file).
    """
    import onnxruntime

    label = path if label is None else label
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = step(*args)
    for name, g, w in zip(OUTPUTS, got, want):
        if not np.isfinite(w.numpy()).all():
            raise RuntimeError(f"ONNX export of {label}: output {name} is not finite in torch (NaN or inf in the weights)")
        if not np.allclose(g, w.numpy(), atol=1e-4):
            raise RuntimeError(f"ONNX export of {label}: output {name} differs from torch by {np.abs(g - w.numpy()).max()}")
