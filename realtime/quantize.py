"""int8 exports: onnxruntime's quantization, and how far the quantized policy strays from fp32.

Learner side (needs onnx for onnxruntime's quantizer). The matrix products
(``MatMul``, ``Gemm``) get int8 weights; their activations are quantized per
call (dynamic quantization, no calibration set), so the products run as int8
kernels (VNNI where the CPU has it). The convolutions (pixel encoders) are
quantized statically when observations to calibrate on are given: int8
weights per output channel and uint8 activations whose ranges come from those
observations (QDQ format, which onnxruntime runs as ``QLinearConv``); without
them they stay fp32 (a dynamically quantized convolution, ``ConvInteger``,
runs ~20× slower than fp32 here). Norms, activations and sampling stay fp32.

An int8 export is judged against the fp32 export of the same agent on the
real task before anything is written: the mean |Δaction| over a rollout
(both policies see the same observations and noise, each keeps its own
carry) and the returns of evaluation episodes of each. Beyond the bound the
export is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .signature import advance_path, sidecar_path

#: Quantization modes ``export_policy(quantize=…)`` knows.
MODES = ("int8",)
#: The operators quantized dynamically: the matrix products. Not the convolutions: onnxruntime runs a
#: dynamically quantized convolution (ConvInteger) about 20× slower than the fp32 one here (1m pixels: 15.6 ms
#: against 0.65 ms a step), where the products gain; docs/design.md, "int8".
OPS = ("MatMul", "Gemm")
#: The operators quantized statically, on calibration observations: the convolutions (``QLinearConv``).
STATIC_OPS = ("Conv",)
#: A convolution is quantized only with at least this many input channels. Here (onnxruntime 1.32, one thread,
#: VNNI) the int8 convolutions of the 12m encoder's 32-, 48- and 64-channel inputs ran 3.3–4.3× faster than
#: fp32, but its first (3 channels) 1.6× slower, and the whole 1m encoder (3, 8, 12, 16 channels) 1.2× slower
#: with the quantize/dequantize steps around the fp32 norms; docs/design.md, "int8".
MIN_STATIC_CHANNELS = 32
#: Observations of the calibration rollout.
CALIBRATION_STEPS = 200
#: Seed of the calibration rollout (the deviation report's rollout and episodes use seeds 0 … episodes).
CALIBRATION_SEED = 1000
#: Default refusal bound on the mean |Δaction| (actions lie in [-1, 1]).
DEFAULT_BOUND = 0.05


def convolutions_to_quantize(model: Any) -> list[str]:
    """The names of a model's convolutions with at least ``MIN_STATIC_CHANNELS`` input channels.

    Args:
        model: the ONNX model's bytes, or an ``onnx.ModelProto``.
    """
    import onnx

    graph = (onnx.load_from_string(model) if isinstance(model, bytes) else model).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    # Conv weights are [out, in / groups, kh, kw].
    return [
        node.name
        for node in graph.node
        if node.op_type in STATIC_OPS and len(weights.get(node.input[1], [])) == 4 and weights[node.input[1]][1] >= MIN_STATIC_CHANNELS
    ]


def quantize_bytes(data: bytes, mode: str, observations: list[dict[str, np.ndarray]] | None = None) -> bytes:
    """An ONNX model's bytes with int8 matrix products (dynamic) and, given ``observations``, int8 convolutions (static).

    Args:
        data: the fp32 model (a fused step or one part of a two-part step).
        mode: ``int8``.
        observations: unbatched observations of the task to calibrate the
            convolutions' activation ranges on (the model's observation
            inputs come from them, its other inputs are zeros: the encoder,
            the only place with convolutions, sees only the observation).
            Only convolutions with ``MIN_STATIC_CHANNELS`` input channels or
            more are quantized. None: the convolutions stay fp32.

    Raises:
        ValueError: for an unknown mode, or observations that lack a key the model observes.
    """
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; valid: {', '.join(MODES)}")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(data)
        # onnxruntime's recommended preparation (graph optimisation, shapes); the shapes are static,
        # so ONNX's own shape inference suffices (the symbolic one would need sympy).
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        import onnx

        if observations and (convolutions := convolutions_to_quantize(onnx.load(str(prepared)))):
            static = Path(tmp) / "static.onnx"
            # QDQ with per-channel s8 weights and u8 activations: what onnxruntime fuses into QLinearConv
            # (VNNI kernels). MinMax ranges over the calibration observations.
            quantize_static(
                prepared,
                static,
                _Calibration(prepared, observations),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_OPS),
                nodes_to_quantize=convolutions,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            prepared = static
        # Signed int8 weights (QInt8): the VNNI kernels take s8 weights with u8 activations. After the static
        # step the model has QDQ nodes, about which the quantizer warns ("already quantized?"): expected here.
        with _quiet_root_warning("Please check if the model is already quantized"):
            quantize_dynamic(prepared, target, op_types_to_quantize=list(OPS), weight_type=QuantType.QInt8)
        return target.read_bytes()


@contextlib.contextmanager
def _quiet_root_warning(prefix: str) -> Iterator[None]:
    """Drops the root logger's records that start with ``prefix`` while the block runs."""

    def drop(record: logging.LogRecord) -> bool:  # a logger takes any callable as a filter
        return not str(record.msg).startswith(prefix)

    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


class _Calibration:
    """onnxruntime's calibration data reader: one feed per observation (batch 1), zeros for the model's other inputs.

    Raises:
        ValueError: when the observations lack a key the model observes.
    """

    def __init__(self, model: Path, observations: list[dict[str, np.ndarray]]) -> None:
        import onnx
        from onnx import helper

        from .signature import obs_input

        spec = {}  # input name -> (shape, dtype)
        for node in onnx.load(str(model)).graph.input:
            tensor = node.type.tensor_type
            spec[node.name] = (tuple(d.dim_value for d in tensor.shape.dim), helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        keys = {obs_input(key): key for key in observations[0]}
        missing = [name for name in spec if name.startswith(obs_input("")) and name not in keys]
        if missing:
            raise ValueError(f"the calibration observations lack the model's inputs {missing}")
        zeros = {name: np.zeros(shape, dtype) for name, (shape, dtype) in spec.items() if name not in keys}
        feeds = [{**zeros, **{n: np.asarray(o[keys[n]], spec[n][1])[None] for n in spec if n in keys}} for o in observations]
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, None after the last."""
        return next(self._feeds, None)


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


def calibration_observations(
    runtime: Any, make_env: Callable[[int], Any], *, steps: int = CALIBRATION_STEPS, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """The observations (the model's keys, copies) of a ``steps``-long rollout of ``runtime`` on ``make_env(seed)``."""
    env = make_env(seed)
    runtime.rng = np.random.default_rng(seed)
    runtime.reset()
    obs, seen = env.reset(seed=seed), []
    for _ in range(steps):
        if obs["is_last"]:
            obs = env.reset()
            runtime.reset()
        seen.append({key: np.array(obs[key]) for key in runtime.obs_keys})
        obs = env.step(runtime.step(obs))
    return seen


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

    A pixel policy's convolutions are calibrated on ``CALIBRATION_STEPS``
    observations of a rollout of the fp32 policy on ``make_env`` (a seed apart
    from the report's, so the report judges observations it was not calibrated on).

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
        calibration = calibration_observations(PolicyRuntime(fp32), make_env, seed=CALIBRATION_SEED)
        sidecar = export_policy(agent, quant, obs_space=obs_space, quantize=mode, calibration=calibration, **export_args)
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
