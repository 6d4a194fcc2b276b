"""Hydra configuration: ``config.yaml`` and the groups ``algo/``, ``size/``, ``env/``, ``exp/``.

The dataclasses in :mod:`reverie.configs.schema` validate every composed
config, so an unknown key or a value of the wrong type fails with Hydra's own
message.
"""
