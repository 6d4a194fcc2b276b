"""Runs an exported policy step with onnxruntime, one control step per call.

Both formats of :mod:`reverie.realtime.signature` load. The carry (the
recurrent state ``deter`` h_t, the latent ``stoch`` z_t and the previous
action) is kept between calls; ``reset()`` starts a new episode.

* Fused (format 1): ``step`` runs the one graph; it resets the carry itself
  when ``is_first`` is set.
* Two parts (format 2): ``step`` runs only the observe part (the critical
  path: encoder, posterior, actor head) from h_t, and ``advance`` runs the
  recurrent step h_{t+1} = f(h_t, z_t, a_t) with the action really sent. The
  control loop calls ``advance`` after sending the action, while it waits for
  the next tick; when nobody did, the next ``step`` runs it first, so the
  actions never depend on whether or when ``advance`` was called. An episode
  starts from the advance of an all-zero carry, computed once at load.

Input and output buffers are allocated once and bound with I/O binding, so a
step allocates nothing.

A small observe part is also *warmed* after each advance: run once more on
scratch outputs, off the critical path, so that its weights and code are back
in the core's caches when the next observation comes (the advance streams its
own, larger weights through them); docs/design.md, "Warming the observe part".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reverie.envs.base import all_finite, dtype_fits

from .signature import (
    ADVANCE_OUTPUTS,
    DTYPES,
    OBSERVE_OUTPUTS,
    OUTPUTS,
    advance_path,
    check_session,
    is_split,
    obs_input,
    read_payload,
    sha256_bytes,
    sidecar_path,
    split_payload,
    validate_sidecar,
)

#: Observe parts up to this size are warmed after each advance (``warm=None``): their weights can stay in a
#: core's private cache (1–2 MB on current x86 server cores) until the next tick. Larger ones would not, and
#: warming them would only add a whole critical-path run to the off-path work.
WARM_MAX_BYTES = 1 << 20


def _buffers(entries: list[dict[str, Any]], names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Zeroed arrays for sidecar entries (only ``names``, in that order, when given)."""
    spec = {e["name"]: e for e in entries}
    return {n: np.zeros(spec[n]["shape"], DTYPES[spec[n]["dtype"]]) for n in (names or spec)}


class PolicyRuntime:
    """An exported policy step, checked against its sidecar.

    Args:
        path: the ONNX file (of a two-part model: its observe part; the
            advance part is ``policy.advance.onnx`` beside it); its sidecar is
            ``path + '.json'`` unless given.
        sidecar: explicit sidecar path, or the sidecar itself.
        threads: onnxruntime intra-op threads (1 for a latency-bounded loop).
        seed: seed of the host-side noise generator.
        model_bytes: the model's bytes when already in memory (hot swap; of a
            two-part model, both parts as the weight channel sends them).
        hash_checked: the caller has just checked the bytes at ``path`` (and
            beside it) against the sidecar's sha256 (a hot swap after
            ``decode_weights``): skip it.
        warm: two-part models: run the observe part once more after each
            ``advance()`` (on scratch outputs; nothing in the carry changes) to
            bring its weights back into the caches. None: when the observe part
            is at most ``WARM_MAX_BYTES``.

    Raises:
        ValueError: when the file(s) or sidecar are missing, corrupted, or do
            not match (the message names the field: hash, part, input name,
            shape or dtype).
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
        warm: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        if model_bytes is None and (path is None or not Path(path).exists()):
            raise ValueError(f"policy file {path} does not exist")
        if isinstance(sidecar, dict):
            meta = sidecar
        else:
            if sidecar:
                side_path = Path(sidecar)
            elif path is not None:
                side_path = sidecar_path(path)
            else:
                raise ValueError("a policy given as bytes, without a path, needs its sidecar")
            if not side_path.exists():
                raise ValueError(f"sidecar {side_path} is missing (export writes it next to the .onnx)")
            try:
                meta = json.loads(side_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"sidecar {side_path} is not valid JSON: {exc}") from exc
        validate_sidecar(meta)
        self.meta = meta
        #: The version of the published policy this runs (0: a local file); whoever publishes it sets it (the actor).
        self.version = 0
        #: The learner's wall-clock time (s) of that publication; 0.0 when unknown.
        self.published_at = 0.0
        self.split = is_split(meta)
        sources = self._sources(path, meta, model_bytes, hash_checked)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = _session(ort, sources[0], options, path)
        check_session(self.session, meta["inputs"], OBSERVE_OUTPUTS if self.split else OUTPUTS)
        self.obs_keys: list[str] = list(meta["obs_keys"])
        self.discrete = bool(meta["action"]["discrete"])
        self.rng = np.random.default_rng(seed)
        #: The observe part's (or the fused graph's) inputs and outputs.
        self.inputs = _buffers(meta["inputs"])
        self._prepare_observations()
        self.outputs = _buffers(meta["outputs"], OBSERVE_OUTPUTS if self.split else OUTPUTS)
        self._binding = _bind(ort, self.session, self.inputs, self.outputs)
        self.advance_session = None
        if self.split:
            advance = meta["advance"]
            self.advance_session = _session(ort, sources[1], options, advance_path(path) if path else None)
            try:
                check_session(self.advance_session, advance["inputs"], ADVANCE_OUTPUTS)
            except ValueError as exc:
                raise ValueError(f"advance part: {exc}") from None
            # The carry lives in the buffers both parts are bound to: h_t is the
            # observe part's `deter`, z_t its `stoch_out`, a_t the action sent.
            self._prev = np.zeros(self.outputs["action"].shape, np.float32)
            advance_in = {"deter": self.inputs["deter"], "stoch": self.outputs["stoch_out"], "action": self._prev}
            self._next = _buffers(advance["outputs"], ADVANCE_OUTPUTS)
            self._advance_binding = _bind(ort, self.advance_session, advance_in, self._next)
            # An episode's first h and its projection: the advance of an all-zero carry (as obs_step resets).
            self._first, self._pending = False, True  # `_pending`: the advance of the current carry has not run
            self._run_advance()
            self._h0, self._p0 = self._next["deter_out"].copy(), self._next["post_deter_out"].copy()
        #: Whether ``advance()`` warms the observe part (two-part models only).
        self.warm = self.split and (meta["observe"]["bytes"] <= WARM_MAX_BYTES if warm is None else bool(warm))
        scratch = {name: np.zeros_like(array) for name, array in self.outputs.items()}
        self._warm_binding = _bind(ort, self.session, self.inputs, scratch) if self.warm else None
        self.reset()

    @staticmethod
    def _sources(path: str | Path | None, meta: dict[str, Any], model_bytes: bytes | memoryview | None, hash_checked: bool) -> list[Any]:
        """What onnxruntime loads, per part: a file name, or bytes whose hashes were checked here."""
        split = is_split(meta)
        if hash_checked:
            if path is None:
                raise ValueError("hash_checked says the file at path was checked: it needs the path")
            # The caller checked the bytes at `path`: onnxruntime reads the files
            # itself, so no copy of the model is made while holding the GIL (a
            # control thread may be running beside us).
            return [str(path), str(advance_path(path))] if split else [str(path)]
        # Otherwise the bytes that were hashed are the bytes loaded: a file
        # replaced between the check and the load cannot slip in unchecked.
        if model_bytes is None:
            if path is None:  # __init__ refuses this already
                raise ValueError("a policy needs its file or its bytes")
            if split and not advance_path(path).exists():
                raise ValueError(f"advance part {advance_path(path)} is missing (a two-part export writes it beside {Path(path).name})")
            model_bytes = read_payload(path, meta)
        digest = sha256_bytes(model_bytes)
        if digest != meta.get("sha256"):
            raise ValueError(f"sha256 mismatch: model is {digest[:16]}…, sidecar says {str(meta.get('sha256'))[:16]}…")
        parts = split_payload(model_bytes, meta)
        if split:
            for name, data in zip(("observe", "advance"), parts):
                if data is None or sha256_bytes(data) != meta[name]["sha256"]:  # (a two-part payload has both parts)
                    raise ValueError(f"{name} part: sha256 does not match the sidecar (the two parts come from different exports)")
        return [bytes(p) for p in parts if p is not None]

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

    def _prepare_observations(self) -> None:
        """Sets up what ``step`` writes into: each key's input row and one array behind all float observations.

        The float observations' inputs become views of one array, so that
        ``step`` checks them for non-finite values in one call (a check per
        key cost a few µs each on the 1m critical path).
        """
        floats = [obs_input(k) for k in self.obs_keys if self.inputs[obs_input(k)].dtype == np.float32]
        flat = np.zeros(sum(self.inputs[n].size for n in floats), np.float32)
        self._float_obs = flat if floats else None
        offset = 0
        for name in floats:
            size = self.inputs[name].size
            self.inputs[name] = flat[offset : offset + size].reshape(self.inputs[name].shape)
            offset += size
        #: ``(key, row)``: the row of the key's input that a step's value goes into.
        self._obs_rows = [(k, self.inputs[obs_input(k)][0]) for k in self.obs_keys]
        self._noise_row = self.inputs["noise"][0]

    def reset(self) -> None:
        """Starts an episode: the next step starts from a fresh carry."""
        if self.split:
            for buffer in (self.inputs["deter"], self.outputs["stoch_out"], self._prev):
                buffer[...] = 0
            self._first, self._pending = True, False
            return
        for name in ("deter", "stoch", "prev_action"):
            self.inputs[name][...] = 0
        self.inputs["is_first"][...] = True

    def step(self, obs: dict[str, np.ndarray], noise: np.ndarray | None = None) -> np.ndarray:
        """One control step: the action for ``obs``.

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
        # Validate and copy each key into its input (the carry is untouched until the graph runs).
        for key, row in self._obs_rows:
            value = obs.get(key)
            if value is None:
                raise ValueError(f"observation key {key!r} is missing")
            if type(value) is not np.ndarray:
                value = np.asarray(value)
            if value.shape != row.shape:
                raise ValueError(f"observation {key!r}: shape {value.shape}, model expects {row.shape}")
            if value.dtype != row.dtype and not dtype_fits(value.dtype, row.dtype):
                raise ValueError(f"observation {key!r}: dtype {value.dtype}, model expects {row.dtype}")
            row[...] = value
        # One check over every float observation, after the conversion to the model's dtype (a float64
        # beyond float32's range is refused too); the key is looked up only when it fails.
        if self._float_obs is not None and not all_finite(self._float_obs):
            key = next(k for k, row in self._obs_rows if not all_finite(row))
            raise ValueError(f"observation {key!r} has non-finite values")
        first = bool(np.asarray(obs.get("is_first", False)))
        if noise is None:
            self.rng.random(out=self._noise_row, dtype=np.float32)
        else:
            self._noise_row[...] = noise
        if self.split:
            return self._observe(first)
        if first:
            self.inputs["is_first"][...] = True
        self.session.run_with_iobinding(self._binding)
        action = self.outputs["action"][0].copy()
        # The outputs become the next step's carry.
        self.inputs["deter"][...] = self.outputs["deter_out"]
        self.inputs["stoch"][...] = self.outputs["stoch_out"]
        self.inputs["prev_action"][...] = self.outputs["action"]
        self.inputs["is_first"][...] = False
        return action

    def _observe(self, first: bool) -> np.ndarray:
        """The two-part step: h_t (advanced now if nobody did), then the observe part."""
        if first or self._first:
            self.inputs["deter"][...] = self._h0
            self.inputs["post_deter"][...] = self._p0
        else:
            self._run_advance()  # a no-op when the loop already ran it (and no warming: this is the critical path)
            self.inputs["deter"][...] = self._next["deter_out"]
            self.inputs["post_deter"][...] = self._next["post_deter_out"]
        self.session.run_with_iobinding(self._binding)
        action = self.outputs["action"][0].copy()
        self._prev[...] = self.outputs["action"]
        self._first, self._pending = False, True
        return action

    def advance(self) -> bool:
        """Runs the recurrent advance of the current carry if it is due (two-part models).

        Called by the control loop after the action is sent (off the critical
        path); ``step`` calls it itself when it has not run. With ``warm``,
        the observe part then runs once on scratch outputs (see the module docstring).

        Returns:
            Whether it ran (False for a fused model, at an episode's start, or when already done).
        """
        if not self._run_advance():
            return False
        self.warm_up()
        return True

    def warm_up(self) -> bool:
        """Runs the observe part once on scratch outputs (carry untouched) so that its weights are in cache.

        ``advance()`` calls it; a loop that busy-waits for its tick calls it
        again just before the tick, since a long wait lets the machine evict
        them (docs/design.md, "Warming the observe part").

        Returns:
            Whether it ran (False unless ``warm`` is on).
        """
        if self._warm_binding is None:
            return False
        self.session.run_with_iobinding(self._warm_binding)
        return True

    def _run_advance(self) -> bool:
        """The advance itself, if due (no warming)."""
        if not self.split or not self._pending or self._first:
            return False
        assert self.advance_session is not None  # a two-part model has one
        self.advance_session.run_with_iobinding(self._advance_binding)
        self._pending = False
        return True

    def action_sent(self, action: np.ndarray) -> None:
        """The action actually sent (e.g. the loop's safe action) becomes the carry's previous action.

        Raises:
            ValueError: for an action of another size or with non-finite values.
        """
        action = np.asarray(action)
        prev = self._prev if self.split else self.inputs["prev_action"]
        expected = prev.shape[1:]
        if action.shape != expected or not all_finite(action):
            raise ValueError(f"sent action {action.shape} must be finite with shape {expected}")
        prev[0] = action
        if self.split:
            self._pending = True  # the advance takes the action sent: (re)compute it

    def latent(self) -> tuple[np.ndarray, np.ndarray]:
        """Views of h_t ``[D]`` and z_t ``[S, C]`` (or ``[S]``) of the last step (the recorder stores them)."""
        if self.split:
            return self.inputs["deter"][0], self.outputs["stoch_out"][0]
        return self.inputs["deter"][0], self.inputs["stoch"][0]

    def carry(self) -> dict[str, np.ndarray]:
        """Copies of the carry after the last step: ``deter`` (h_t), ``stoch`` (z_t), ``prev_action``, ``is_first``.

        The same in both formats, so a carry moves between them (hot swap).
        """
        if self.split:
            deter, stoch = self.latent()
            return {
                "deter": deter[None].copy(),
                "stoch": stoch[None].copy(),
                "prev_action": self._prev.copy(),
                "is_first": np.array([self._first]),
            }
        return {k: self.inputs[k].copy() for k in ("deter", "stoch", "prev_action", "is_first")}

    def load_carry(self, other: PolicyRuntime) -> None:
        """Continues another runtime's episode (hot swap): takes its carry and first-step flag.

        A two-part runtime recomputes the advance with its own weights.

        Raises:
            ValueError: when a carry array's shape differs (nothing is changed then).
        """
        carry, mine = other.carry(), self.carry()
        for name in ("deter", "stoch", "prev_action"):
            if carry[name].shape != mine[name].shape:
                raise ValueError(f"cannot carry {name!r} over: shapes {carry[name].shape} and {mine[name].shape} differ")
        first = bool(carry["is_first"].reshape(-1)[0])
        if self.split:
            self.inputs["deter"][...] = carry["deter"]
            self.outputs["stoch_out"][...] = carry["stoch"]
            self._prev[...] = carry["prev_action"]
            self._first, self._pending = first, not first
            return
        for name in ("deter", "stoch", "prev_action"):
            self.inputs[name][...] = carry[name]
        self.inputs["is_first"][...] = first


def _session(ort: Any, source: str | bytes, options: Any, path: str | Path | None) -> Any:
    """An onnxruntime session, or a ``ValueError`` with onnxruntime's first line."""
    try:
        # No fallback: with one provider it only retries the same load, after printing a banner.
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"], enable_fallback=0)
    except UnicodeDecodeError as exc:  # a corrupted name inside the graph: onnxruntime's own message cannot be decoded
        raise ValueError(
            f"onnxruntime cannot load the model {path or ''}: it is corrupted (bytes that are not UTF-8 at {exc.start})"
        ) from None
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ValueError(f"onnxruntime cannot load the model {path or ''}: {first}") from None


def _bind(ort: Any, session: Any, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> Any:
    """I/O binding of ``session`` to preallocated arrays (outputs are written into them in place)."""
    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_cpu_input(name, array)
    for name, array in outputs.items():
        binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
    return binding
