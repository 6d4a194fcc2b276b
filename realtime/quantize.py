"""int8 exports: onnxruntime's dynamic quantization, and how far the quantized policy strays from fp32.

Learner side (needs onnx for onnxruntime's quantizer). The matrix products
(``MatMul``, ``Gemm``) get int8 weights; activations are quantized per call
(dynamic quantization, no calibration set), so the products run as int8
kernels (VNNI where the CPU has it). Everything else (convolutions, norms,
activations, sampling) stays fp32.

An int8 export is judged against the fp32 export of the same agent on the
real task before anything is written: the mean |Δaction| over a rollout
(both policies see the same observations and noise, each keeps its own
carry) and the returns of evaluation episodes of each. Beyond the bound the
export is refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .signature import advance_path, sidecar_path

#: Quantization modes ``export_policy(quantize=…)`` knows.
MODES = ("int8",)
#: The operators whose weights become int8: the matrix products. Not the convolutions: onnxruntime runs a
#: dynamically quantized convolution (ConvInteger) about 20× slower than the fp32 one here (1m pixels: 15.6 ms
#: against 0.65 ms a step), where the products gain; docs/design.md, "int8".
OPS = ("MatMul", "Gemm")
#: Default refusal bound on the mean |Δaction| (actions lie in [-1, 1]).
DEFAULT_BOUND = 0.05


def quantize_bytes(data: bytes, mode: str) -> bytes:
    """An ONNX model's bytes with int8 weights in its matrix products (onnxruntime dynamic quantization).

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; valid: {', '.join(MODES)}")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(data)
        # onnxruntime's recommended preparation (graph optimisation, shapes); the shapes are static,
        # so ONNX's own shape inference suffices (the symbolic one would need sympy).
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        # Signed int8 weights (QInt8): the VNNI kernels take s8 weights with u8 activations.
        quantize_dynamic(prepared, target, op_types_to_quantize=list(OPS), weight_type=QuantType.QInt8)
        return target.read_bytes()


def deviation_report(
    reference: Any,
    candidate: Any,
    make_env: Callable[[int], Any],
    *,
    steps: int = 1000,
    episodes: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """How far ``candidate`` (int8) strays from ``reference`` (fp32), two ``PolicyRuntime``s of one agent.

    Args:
        reference, candidate: the two runtimes.
        make_env: builds the task's environment from a seed.
        steps: rollout length for the action deviation; the reference drives
            the environment, both see the same observations and noise, each
            keeps its own carry.
        episodes: evaluation episodes of each policy (same seeds for both).
        seed: the first seed.

    Returns:
        ``steps``, ``mean_abs_action``, ``max_abs_action``, ``p99_abs_action``,
        ``episodes``, ``return_fp32``/``return_int8`` (means), ``returns_fp32``/``returns_int8``,
        ``return_difference`` (int8 − fp32).
    """
    env = make_env(seed)
    rng = np.random.default_rng(seed)
    reference.reset()
    candidate.reset()
    obs = env.reset(seed=seed)
    deviation = []
    for _ in range(steps):
        if obs["is_last"]:
            obs = env.reset()
            reference.reset()
            candidate.reset()
        noise = rng.random(reference.noise_dim, dtype=np.float32)
        action = reference.step(obs, noise)
        deviation.append(float(np.abs(candidate.step(obs, noise) - action).max()))
        obs = env.step(action)
    returns = {
        name: [_episode(runtime, make_env, seed + 1 + i) for i in range(episodes)]
        for name, runtime in (("fp32", reference), ("int8", candidate))
    }
    dev = np.array(deviation)
    return {
        "steps": steps,
        "mean_abs_action": float(dev.mean()),
        "p99_abs_action": float(np.percentile(dev, 99)),
        "max_abs_action": float(dev.max()),
        "episodes": episodes,
        "return_fp32": float(np.mean(returns["fp32"])) if episodes else None,
        "return_int8": float(np.mean(returns["int8"])) if episodes else None,
        "return_difference": float(np.mean(returns["int8"]) - np.mean(returns["fp32"])) if episodes else None,
        "returns_fp32": returns["fp32"],
        "returns_int8": returns["int8"],
    }


def _episode(runtime: Any, make_env: Callable[[int], Any], seed: int) -> float:
    """The return of one episode of ``runtime`` (its own noise generator, reseeded) on ``make_env(seed)``."""
    env = make_env(seed)
    runtime.rng = np.random.default_rng(seed)
    runtime.reset()
    obs, total = env.reset(seed=seed), 0.0
    while not obs["is_last"]:
        obs = env.step(runtime.step(obs))
        total += float(obs["reward"])
    return total


def export_quantized(
    agent: Any,
    path: str | Path,
    *,
    obs_space: dict[str, Any],
    make_env: Callable[[int], Any],
    mode: str = "int8",
    bound: float = DEFAULT_BOUND,
    steps: int = 1000,
    episodes: int = 10,
    **export_args: Any,
) -> dict[str, Any]:
    """Exports ``agent`` quantized to ``path`` if it stays within ``bound`` of its fp32 export; returns the sidecar.

    The report (``deviation_report``) is recorded in the sidecar under
    ``quantize.report``, beside the bound.

    Args:
        agent: the trained agent.
        path: output ONNX file (as ``export_policy``).
        obs_space: the environment's observation spaces.
        make_env: builds the task's environment from a seed (the real task, for the report).
        mode: ``int8``.
        bound: the largest mean |Δaction| accepted.
        steps, episodes: of the report.
        **export_args: passed to ``export_policy`` (``deterministic``, ``split``, ``metadata``).

    Raises:
        ValueError: when the quantized policy deviates beyond ``bound`` (nothing is written then).
    """
    import json

    from .export import export_policy
    from .runtime import PolicyRuntime

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, quant = Path(tmp) / "fp32.onnx", Path(tmp) / "quant.onnx"
        export_policy(agent, fp32, obs_space=obs_space, **export_args)
        sidecar = export_policy(agent, quant, obs_space=obs_space, quantize=mode, **export_args)
        report = deviation_report(PolicyRuntime(fp32), PolicyRuntime(quant), make_env, steps=steps, episodes=episodes)
        if not report["mean_abs_action"] <= bound:
            raise ValueError(
                f"{mode} export refused: mean |Δaction| {report['mean_abs_action']:.4f} over {steps} steps exceeds the bound {bound}"
                f" (returns over {episodes} episodes: fp32 {report['return_fp32']}, {mode} {report['return_int8']})"
            )
        sidecar["quantize"] = {**sidecar["quantize"], "bound": bound, "report": report}
        sidecar_path(quant).write_text(json.dumps(sidecar, indent=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Sidecar first, the model last (as export_policy does).
        shutil.copy(sidecar_path(quant), sidecar_path(path))
        if advance_path(quant).exists():
            shutil.copy(advance_path(quant), advance_path(path))
        else:
            advance_path(path).unlink(missing_ok=True)
        shutil.copy(quant, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    return sidecar
