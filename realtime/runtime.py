"""Runs an exported policy step with onnxruntime, one control step per call.

The carry (``deter``, ``stoch``, previous action) is kept between calls;
``reset()`` starts a new episode (the graph resets the carry when
``is_first`` is set). Input and output buffers are allocated once and bound
with I/O binding, so a step allocates nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reverie.envs.base import dtype_fits

from .signature import DTYPES, OUTPUTS, check_session, obs_input, sha256_bytes, sidecar_path, validate_sidecar


class PolicyRuntime:
    """An exported policy step, checked against its sidecar.

    Args:
        path: the ONNX file; its sidecar is ``path + '.json'`` unless given.
        sidecar: explicit sidecar path.
        threads: onnxruntime intra-op threads (1 for a latency-bounded loop).
        seed: seed of the host-side noise generator.
        model_bytes: the ONNX file's content when already in memory (hot swap).
        hash_checked: the caller has just checked these bytes against the
            sidecar's sha256 (a hot swap after ``decode_weights``): skip it.

    Raises:
        ValueError: when the file or sidecar is missing, corrupted, or they do
            not match (the message names the field: hash, input name, shape or dtype).
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        sidecar: str | Path | dict | None = None,
        threads: int = 1,
        seed: int = 0,
        model_bytes: bytes | memoryview | None = None,
        hash_checked: bool = False,
    ) -> None:
        import onnxruntime as ort

        if model_bytes is None and (path is None or not Path(path).exists()):
            raise ValueError(f"policy file {path} does not exist")
        if isinstance(sidecar, dict):
            meta = sidecar
        else:
            side_path = Path(sidecar) if sidecar else sidecar_path(path)
            if not side_path.exists():
                raise ValueError(f"sidecar {side_path} is missing (export writes it next to the .onnx)")
            try:
                meta = json.loads(side_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"sidecar {side_path} is not valid JSON: {exc}") from exc
        validate_sidecar(meta)
        # After a hash check by the caller (a hot swap) onnxruntime reads the
        # file itself: no copy of the model is made while holding the GIL (a
        # control thread may be running beside us). Otherwise the bytes that
        # were hashed are the bytes loaded: a file replaced between the check
        # and the load cannot slip in unchecked.
        if hash_checked:
            digest = meta.get("sha256")
        else:
            if model_bytes is None:
                model_bytes = Path(path).read_bytes()
            digest = sha256_bytes(model_bytes)
        if digest != meta.get("sha256"):
            raise ValueError(f"sha256 mismatch: model is {digest[:16]}…, sidecar says {str(meta.get('sha256'))[:16]}…")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            source = str(path) if model_bytes is None else bytes(model_bytes)
            # No fallback: with one provider it only retries the same load, after printing a banner.
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"], enable_fallback=0)
        except UnicodeDecodeError as exc:  # a corrupted name inside the graph: onnxruntime's own message cannot be decoded
            raise ValueError(
                f"onnxruntime cannot load the model {path or ''}: it is corrupted (bytes that are not UTF-8 at {exc.start})"
            ) from None
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ValueError(f"onnxruntime cannot load the model {path or ''}: {first}") from None
        self.meta = meta
        self._check_signature()
        self.obs_keys: list[str] = list(meta["obs_keys"])
        self.discrete = bool(meta["action"]["discrete"])
        self.rng = np.random.default_rng(seed)
        spec = {i["name"]: i for i in meta["inputs"]}
        self.inputs = {n: np.zeros(spec[n]["shape"], DTYPES[spec[n]["dtype"]]) for n in spec}
        out_spec = {o["name"]: o for o in meta["outputs"]}
        self.outputs = {n: np.zeros(out_spec[n]["shape"], DTYPES[out_spec[n]["dtype"]]) for n in OUTPUTS}
        self._binding = self.session.io_binding()
        for name, array in self.inputs.items():
            self._binding.bind_cpu_input(name, array)
        for name, array in self.outputs.items():
            self._binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        self.reset()

    def _check_signature(self) -> None:
        # That the sidecar declares every observation and carry input was checked by validate_sidecar.
        check_session(self.session, self.meta["inputs"], OUTPUTS)

    def check_spaces(self, obs_space: dict[str, Any], act_space: Any) -> None:
        """Checks that this policy fits an environment or robot.

        Args:
            obs_space: the source's observation spaces (must hold every key the
                policy observes, with the policy's shapes).
            act_space: the source's action space (``shape``, ``discrete``).

        Raises:
            ValueError: naming the missing key, the shape, or the action size or kind that differs.
        """
        for key in self.obs_keys:
            if key not in obs_space:
                raise ValueError(f"the policy observes {key!r}, which the source does not provide (it has {sorted(obs_space)})")
            want = tuple(self.inputs[obs_input(key)].shape[1:])
            if tuple(obs_space[key].shape) != want:
                raise ValueError(f"observation {key!r}: the source gives shape {tuple(obs_space[key].shape)}, the policy expects {want}")
        action = self.meta["action"]
        size = int(np.prod(act_space.shape))
        if action["dim"] != size or action["discrete"] != bool(act_space.discrete):
            kind = lambda discrete: "discrete" if discrete else "continuous"  # noqa: E731
            raise ValueError(
                f"the policy acts with {action['dim']} {kind(action['discrete'])} dims, the source takes {size} {kind(act_space.discrete)}"
            )

    @property
    def noise_dim(self) -> int:
        """Width of the ``noise`` input."""
        return int(self.meta["noise"]["dim"])

    def reset(self) -> None:
        """Starts an episode: the next step resets the carry inside the graph."""
        for name in ("deter", "stoch", "prev_action"):
            self.inputs[name][...] = 0
        self.inputs["is_first"][...] = True

    def step(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """One control step.

        Args:
            obs: the observation (at least the model's keys, unbatched).
            noise: ``[noise_dim]`` uniform numbers; drawn from the runtime's
                generator when None.

        Returns:
            The action ``[A]`` (a copy).

        Raises:
            ValueError: for a missing key, or a value of the wrong shape or
                dtype, or with non-finite numbers (nothing is written into
                the carry then: the next good observation steps normally).
        """
        values = []
        for key in self.obs_keys:
            if key not in obs:
                raise ValueError(f"observation key {key!r} is missing")
            buffer = self.inputs[obs_input(key)]
            value = np.asarray(obs[key])
            if value.shape != buffer.shape[1:]:
                raise ValueError(f"observation {key!r}: shape {value.shape}, model expects {buffer.shape[1:]}")
            if not dtype_fits(value.dtype, buffer.dtype):
                raise ValueError(f"observation {key!r}: dtype {value.dtype}, model expects {buffer.dtype}")
            if value.dtype.kind in "fc" and not np.isfinite(value).all():
                raise ValueError(f"observation {key!r} has non-finite values")
            values.append((buffer, value))
        for buffer, value in values:
            buffer[0] = value
        if bool(np.asarray(obs.get("is_first", False))):
            self.inputs["is_first"][...] = True
        self.inputs["noise"][0] = self.rng.random(self.noise_dim, dtype=np.float32) if noise is None else noise
        self.session.run_with_iobinding(self._binding)
        action = self.outputs["action"][0].copy()
        # The outputs become the next step's carry.
        self.inputs["deter"][...] = self.outputs["deter_out"]
        self.inputs["stoch"][...] = self.outputs["stoch_out"]
        self.inputs["prev_action"][...] = self.outputs["action"]
        self.inputs["is_first"][...] = False
        return action

    def action_sent(self, action: np.ndarray) -> None:
        """The action actually sent (e.g. the loop's safe action) becomes the carry's previous action.

        Raises:
            ValueError: for an action of another size or with non-finite values.
        """
        action = np.asarray(action)
        expected = self.inputs["prev_action"].shape[1:]
        if action.shape != expected or not np.isfinite(action).all():
            raise ValueError(f"sent action {action.shape} must be finite with shape {expected}")
        self.inputs["prev_action"][0] = action

    def load_carry(self, other: PolicyRuntime) -> None:
        """Continues another runtime's episode (hot swap): copies its carry and first-step flag."""
        for name in ("deter", "stoch", "prev_action", "is_first"):
            if self.inputs[name].shape != other.inputs[name].shape:
                raise ValueError(f"cannot carry {name!r} over: shapes {other.inputs[name].shape} and {self.inputs[name].shape} differ")
            self.inputs[name][...] = other.inputs[name]

    def carry(self) -> dict[str, Any]:
        """Copies of the current carry (for tests and hand-over)."""
        return {k: self.inputs[k].copy() for k in ("deter", "stoch", "prev_action")}
