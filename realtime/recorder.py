"""Turns control-loop ticks into replay steps and streams them to the learner in chunks.

One replay step is what the synchronous trainer stores: the observation, the
action sent after it, and the policy's latent state after observing it
(``deter`` as float16, ``stoch`` as class indices). :func:`experience_schema`
is the contract between actor and learner; the learner refuses chunks that
do not match it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from reverie.envs.base import Space, all_finite, dtype_fits
from reverie.envs.step_spec import EXTRA_KEYS, Schema, StepSpec


def experience_schema(obs_space: dict[str, Space], act_space: Space, *, deter: int, stoch: int) -> Schema:
    """``{key: (dtype, shape)}`` of one replay step (the form of :class:`StepSpec`).

    Args:
        obs_space: the environment's observation spaces (``log/`` keys are left out).
        act_space: its action space.
        deter: size of the recurrent state.
        stoch: number of categorical latents.
    """
    return StepSpec.build(obs_space, act_space, deter=deter, stoch=stoch, classes=1).schema


class ExperienceRecorder:
    """The control loop's recorder: fills chunk buffers and hands full chunks to ``send``.

    A chunk is sent when it holds ``chunk`` steps, at the end of an episode,
    and before the first step of a newly swapped-in policy (so each chunk was
    produced by one policy version, stamped in its header). A step with a
    non-finite value is not recorded (counted in ``skipped``); the next step
    is marked ``is_first`` so no sampled sequence runs across the hole.

    Args:
        send: ``send(arrays, episode=…, policy=…)``, e.g. ``ExperienceSender.send``.
        schema: from :func:`experience_schema`.
        chunk: steps per message.
        on_new_policy: called with ``(version, policy)`` at the first step of
            each new policy version (for swap latency).
    """

    def __init__(
        self,
        send: Callable[..., None],
        schema: Schema,
        *,
        chunk: int = 64,
        on_new_policy: Callable[[int, Any], None] | None = None,
    ) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.send, self.schema, self.chunk = send, schema, int(chunk)
        self.on_new_policy = on_new_policy
        self.obs_keys = [k for k in schema if k not in EXTRA_KEYS]
        self.buffers = {k: np.zeros((self.chunk, *shape), dtype) for k, (dtype, shape) in schema.items()}
        self.count = 0  # steps in the current chunk
        self.episode = 0
        self.version: int | None = None
        self.steps = self.chunks = self.skipped = 0
        self._break = False  # mark the next step is_first

    def record(self, obs: dict[str, np.ndarray], action: np.ndarray | None, policy: Any) -> None:
        """One tick: the observation, the action sent (None at ``is_last``) and the acting policy."""
        version = int(getattr(policy, "version", 0))
        if version != self.version:
            if self.count:
                self.flush()
            if self.version is not None and self.on_new_policy is not None:
                self.on_new_policy(version, policy)
            self.version = version
        row = self.count
        for key in self.obs_keys:
            value, buffer = np.asarray(obs[key]), self.buffers[key]
            # Casting would hide a driver bug (a float image becomes zeros): refuse it, lose the step.
            if not dtype_fits(value.dtype, buffer.dtype):
                self.skipped += 1
                self._break = True
                raise ValueError(f"observation {key!r}: dtype {value.dtype}, the stream carries {buffer.dtype}")
            buffer[row] = value
        self.buffers["action"][row] = 0 if action is None else action
        self._write_latents(row, policy if action is not None else None)
        is_last = bool(self.buffers["is_last"][row])
        if not all(all_finite(buffer[row]) for buffer in self.buffers.values()):
            # The learner would refuse the whole chunk: keep the chunk, lose the step.
            self.skipped += 1
            self._break = True
            if is_last:
                self.flush()
                self.episode += 1
                self._break = False
            return
        if self._break:
            self.buffers["is_first"][row] = True
            self._break = False
        self.count += 1
        self.steps += 1
        if is_last or self.count == self.chunk:
            self.flush()
        if is_last:
            self.episode += 1

    def _write_latents(self, row: int, policy: Any) -> None:
        latent = getattr(policy, "latent", None)  # a PolicyRuntime: h_t and z_t of its last step
        deter, stoch = self.buffers["deter"], self.buffers["stoch"]
        if latent is not None:
            h, z = latent()
            if h.shape == deter.shape[1:]:
                deter[row] = h
                # Categorical z [S, C] is kept as class indices; a Gaussian z [S] (V1) is not kept.
                stoch[row] = z.argmax(-1) if z.ndim == 2 else 0
                return
        # A policy without latents (random, before the first weights), or of another size: zeros.
        deter[row] = 0
        stoch[row] = 0

    def flush(self) -> None:
        """Sends the steps recorded so far (if any) as one chunk."""
        if not self.count:
            return
        count, self.count = self.count, 0
        # send() copies the arrays before returning, so the buffers are reused.
        self.send({k: v[:count] for k, v in self.buffers.items()}, episode=self.episode, policy=self.version or 0)
        self.chunks += 1
