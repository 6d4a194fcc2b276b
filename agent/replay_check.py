"""``reverie replay check LOGDIR [--repair]``: find (and quarantine) replay rows that validation by meaning refuses.

A replay written before the receiver checked values by meaning, or damaged on
disk, can hold rows that would crash or poison an update (a class index out
of range, a flag byte of 2, an action of 1e38). The check reads the run's
``config.yaml`` for what each value means (:func:`reverie.agent.builder.step_spec`),
scans every row replay holds and reports them by reason. ``--repair``
quarantines them in place (they are never sampled again) after copying the
replay's previous quarantine list and metadata to ``replay/backup-<time>/``.
A learner or trainer starting on such a replay does the same by itself.

It checks the replay generation the run's checkpoint names (the one a
resume loads), or the latest one when there is no checkpoint.
"""

from __future__ import annotations

import collections
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from . import checkpoint
from .replay import MANIFEST, Manifest, Replay

#: Bad step indices listed in a report (the count is always complete).
LISTED = 20


def check_replay(logdir: str | Path, *, repair: bool = False) -> dict[str, Any]:
    """Scans the replay of a run; with ``repair``, quarantines what it finds.

    Returns:
        ``{"rows", "invalid", "by_reason", "steps" (the first LISTED), "quarantined", "repaired", "backup"}``.

    Raises:
        ValueError: when the logdir holds no run or no replay (named in the message).
    """
    from reverie import envs
    from reverie.configs.schema import Config

    from .builder import step_spec

    logdir = Path(logdir)
    config = logdir / "config.yaml"
    if not config.exists():
        raise ValueError(f"{config} does not exist: {logdir} holds no reverie run")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(config))
    assert isinstance(cfg, DictConfig)  # a merge into the structured Config is one
    env = envs.from_config(cfg, cfg.seed)  # the spaces (and the action bounds) come from the environment
    try:
        spec = step_spec(cfg, env.obs_space, env.act_space)
    finally:
        env.close()
    directory = logdir / "replay"
    replay = Replay(capacity=cfg.replay.capacity, seq_len=cfg.batch_length + 1, directory=directory, chunk_size=cfg.replay.chunk_size)
    # The generation a resume would load: the checkpoint's (mapped, not read: only one number is needed), else the latest.
    ckpt = logdir / checkpoint.CHECKPOINT
    generation = checkpoint.replay_generation(checkpoint.read(ckpt, mmap=True)) if ckpt.exists() else None
    if (ckpt.exists() and generation is None) or not replay.load(generation):
        raise ValueError(f"{directory} holds no saved replay")
    by_reason: collections.Counter = collections.Counter()

    def bad_rows(arrays: dict[str, np.ndarray]) -> np.ndarray:
        bad = np.zeros(len(next(iter(arrays.values()))), bool)
        for name, mask in spec.violations(arrays).items():  # once per block: counted by reason and combined
            by_reason[name] += int(mask.sum())
            bad |= mask
        return bad

    steps = replay.scan(bad_rows, keys=spec.checked_keys)
    before = replay.quarantined
    report: dict[str, Any] = {
        "rows": len(replay),
        "invalid": int(len(steps)),
        "by_reason": dict(sorted(by_reason.items())),
        "steps": [int(s) for s in steps[:LISTED]],
        "quarantined": before,
        "repaired": 0,
        "backup": None,
    }
    if repair and len(steps):
        backup = directory / time.strftime("backup-%Y%m%d-%H%M%S")
        backup.mkdir()
        manifest = Manifest.read(directory)
        assert manifest is not None  # replay.load() above read it
        quarantine = manifest.find(replay.generation, directory).files["quarantine"]
        for name in (MANIFEST, quarantine):
            if (directory / name).exists():
                shutil.copy2(directory / name, backup / name)
        report["repaired"] = replay.quarantine(steps % replay.capacity)
        replay.save_quarantine()
        report["quarantined"] = replay.quarantined
        report["backup"] = str(backup)
    return report
