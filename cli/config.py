"""Composes the Hydra config from the package's ``configs`` with command-line overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig

from reverie.configs import schema

CONFIG_DIR = Path(schema.__file__).parent


def compose(overrides: list[str]) -> DictConfig:
    """The composed config for ``overrides`` such as ``["env=dmc/walker_walk", "size=12m"]``.

    Raises:
        hydra.errors.HydraException: for an unknown key, group option or bad value
            (Hydra's own message says which).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    schema.register()
    GlobalHydra.instance().clear()
    with initialize_config_module("reverie.configs", version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def group_options(group: str) -> list[str]:
    """Options of a config group, e.g. ``size`` → ``['100m', '12m', '1m', …]``."""
    root = CONFIG_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def describe_fields(cls: type = schema.Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, help) for each documented leaf of the schema."""
    rows = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
            continue
        if "help" in f.metadata:
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = "???"  # a mandatory key, as OmegaConf writes it
            rows.append((key, repr(default), f.metadata["help"]))
    return rows
