"""Environments for reverie: ``make('<family>/<name>')`` builds a checked env.

Families: ``dmc/<domain>_<task>`` (DeepMind Control suite), ``gym/<id>``
(gymnasium), ``atari/<game>`` (ALE, e.g. ``atari/pong``), ``crafter/<task>``
(``crafter/reward``, ``crafter/noreward``; plain ``crafter`` means
``crafter/reward``) and ``fake/<variant>`` (deterministic test tasks). Heavy
dependencies are imported only when an environment is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .base import BASIC_KEYS, Env, Space, model_keys
from .randomize import Randomize, RandomizeSpec, episode_log
from .wrappers import ActionRepeat, CheckSpaces, NormalizeAction, OneHotAction, TimeLimit

#: Families ``make`` builds.
FAMILIES = ("dmc", "gym", "atari", "crafter", "fake")
#: Names without a task that stand for a full name.
DEFAULT_TASKS = {"crafter": "crafter/reward"}
#: ``fake/<variant>`` names and the FakeEnv arguments they stand for.
FAKE_VARIANTS: dict[str, dict[str, Any]] = {
    "vector": {"obs": "vector"},
    "pixels": {"obs": "pixels"},
    "discrete": {"obs": "vector", "discrete": True},
    "discrete_pixels": {"obs": "pixels", "discrete": True},
}
#: Default action repeat per family.
DEFAULT_REPEAT = {"dmc": 2, "gym": 1, "atari": 4, "crafter": 1, "fake": 1}
#: Families whose raw environment repeats actions itself: ``make`` passes it
#: ``repeat`` and adds no ``ActionRepeat`` (Atari observes the maximum of the
#: last two frames of a repeat, which a generic wrapper cannot do).
INNER_REPEAT = ("atari",)
#: ``obs`` values the image-only families (atari, crafter) accept; all give
#: ``image`` (``vector`` is the config default, so it is accepted as well).
IMAGE_ONLY_OBS = ("pixels", "vector", "both")
#: Simulator steps per episode used for dmc tasks without a time limit (lqr).
DMC_FALLBACK_STEPS = 1000


def _build_dmc(name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    from .dmc import DMC

    return DMC(name, obs=obs, size=size, seed=seed, **kwargs)


def _build_gym(name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    from .gym import Gym

    return Gym(name, obs=obs, size=size, seed=seed, **kwargs)


def _image_only(family: str, obs: str) -> None:
    if obs not in IMAGE_ONLY_OBS:
        raise ValueError(f"obs must be one of {IMAGE_ONLY_OBS} for {family}/ (it observes only images), got {obs!r}")


def _build_atari(name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    from .atari import Atari

    _image_only("atari", obs)
    return Atari(name, size=size, seed=seed, **kwargs)


def _build_crafter(name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    from .crafter import Crafter

    _image_only("crafter", obs)
    return Crafter(name, size=size, seed=seed, **kwargs)


def _build_fake(name: str, obs: str, seed: int, size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    from .fake import FakeEnv

    if name not in FAKE_VARIANTS:
        valid = ", ".join(f"fake/{v}" for v in FAKE_VARIANTS)
        raise ValueError(f"unknown fake variant {name!r}; valid: {valid}")
    return FakeEnv(**{**FAKE_VARIANTS[name], "seed": seed, "size": size, **kwargs})


_BUILDERS: dict[str, Callable[..., Any]] = {
    "dmc": _build_dmc,
    "gym": _build_gym,
    "atari": _build_atari,
    "crafter": _build_crafter,
    "fake": _build_fake,
}


def _split(name: str) -> tuple[str, str]:
    family, sep, rest = DEFAULT_TASKS.get(name, name).partition("/")
    valid = ", ".join(f"{f}/" for f in FAMILIES)
    if not sep or family not in FAMILIES or not rest:
        raise ValueError(f"unknown env {name!r}: valid families are {valid}")
    return family, rest


def make(
    name: str,
    *,
    obs: str = "vector",
    seed: int = 0,
    action_repeat: int | None = None,
    time_limit: int | None = None,
    size: tuple[int, int] = (64, 64),
    randomize: RandomizeSpec | None = None,
    **kwargs: Any,
) -> Env:
    """Builds an environment that follows the reverie contract.

    The raw environment is wrapped as ``CheckSpaces([Randomize](TimeLimit(
    ActionRepeat(NormalizeAction | OneHotAction(raw)))))``: continuous actions
    are in [-1, 1], discrete actions are one-hot. Atari repeats actions itself
    (it max-pools the last two frames), so it gets ``repeat`` and no
    ``ActionRepeat``. ``Randomize`` is there only when ``randomize`` asks for
    something; it sits outside the time limit and the repeat, so its action
    delay and noise count agent steps and it sees every episode's end.

    Args:
        name: ``dmc/<domain>_<task>``, ``gym/<id>``, ``atari/<game>``,
            ``crafter/<task>`` (or ``crafter``) or ``fake/<variant>``.
        obs: ``vector`` or ``pixels`` (dmc and gym also take ``both``); atari
            and crafter observe only ``image`` whichever is given.
        seed: seed of the environment.
        action_repeat: simulator steps per agent step; default 2 for dmc,
            4 for atari, 1 otherwise.
        time_limit: episode limit in agent steps; default none beyond the
            environment's own (dmc: 1000 simulator steps, i.e. 500 agent
            steps at repeat 2; atari: 108,000 frames, i.e. 27,000 agent steps
            at repeat 4; crafter: 10,000 steps).
        size: image (height, width) for pixel observations.
        randomize: domain randomisation (``envs.randomize.RandomizeSpec``);
            None or a nominal spec leaves the environment untouched.
        **kwargs: passed to the raw environment (``DMC``, ``Gym``, ``Atari``,
            ``Crafter``, ``FakeEnv``).

    Returns:
        The wrapped environment.

    Raises:
        ValueError: for an unknown family, task or id (the message lists the
            valid choices).
    """
    family, rest = _split(name)
    repeat = DEFAULT_REPEAT[family] if action_repeat is None else int(action_repeat)
    if family in INNER_REPEAT:
        if "repeat" in kwargs:
            raise ValueError(f"{family}/: give the repeat as action_repeat={kwargs['repeat']}, not repeat=")
        kwargs = {**kwargs, "repeat": repeat}
    env = _BUILDERS[family](rest, obs, seed, tuple(size), kwargs)
    if env.act_space.discrete:
        env = OneHotAction(env)
    else:
        env = NormalizeAction(env)
    if repeat > 1 and family not in INNER_REPEAT:
        env = ActionRepeat(env, repeat)
    if time_limit is None and family == "dmc" and math.isinf(env.max_steps):
        time_limit = DMC_FALLBACK_STEPS // repeat
    if time_limit is not None:
        env = TimeLimit(env, time_limit)
    if randomize is not None and randomize.enabled:
        env = Randomize(env, randomize, seed)
    return CheckSpaces(env)


def from_config(cfg: Any, seed: int) -> Env:
    """The environment a composed config describes (``cfg.env``: name, action repeat, time limit, image size, options, randomize; ``cfg.obs``).

    The trainer, the learner and the actor all build their environment here,
    so the actor needs no agent code (and no torch) to build its own.

    Args:
        cfg: the composed config (``DictConfig``).
        seed: seed of the environment.
    """
    e = cfg.env
    options = e.get("options") or {}
    if not isinstance(options, dict):  # a DictConfig node: plain Python values for the raw environment
        from omegaconf import OmegaConf

        options = OmegaConf.to_container(options, resolve=True)
    if not isinstance(options, dict):  # the schema refuses it; a config.yaml read without the schema may not
        raise ValueError(f"env.options must be a mapping of keyword arguments, got {options!r}")
    randomize = RandomizeSpec.from_config(e.get("randomize"))
    return make(
        e.name,
        obs=cfg.obs,
        seed=seed,
        action_repeat=e.action_repeat,
        time_limit=e.time_limit,
        size=(e.size, e.size),
        randomize=randomize,
        **options,
    )


def list_envs(family: str | None = None) -> list[str]:
    """Names ``make`` accepts, for ``--help`` texts.

    Args:
        family: one of ``FAMILIES``; None lists them all (gym ids come from
            the gymnasium registry, which imports gymnasium; atari games from
            ale-py's ROM list).

    Returns:
        Sorted names such as ``dmc/cartpole_swingup``.
    """
    families = FAMILIES if family is None else (family.rstrip("/"),)
    names: list[str] = []
    for fam in families:
        if fam == "dmc":
            from .dmc import dmc_tasks

            names += [f"dmc/{t}" for t in dmc_tasks()]
        elif fam == "gym":
            import gymnasium

            names += [f"gym/{i}" for i in gymnasium.registry]
        elif fam == "atari":
            from .atari import atari_games

            names += [f"atari/{g}" for g in atari_games()]
        elif fam == "crafter":
            from .crafter import TASKS

            names += [f"crafter/{t}" for t in TASKS]
        elif fam == "fake":
            names += [f"fake/{v}" for v in FAKE_VARIANTS]
        else:
            raise ValueError(f"unknown family {fam!r}; valid: {', '.join(FAMILIES)}")
    return sorted(names)


__all__ = [
    "BASIC_KEYS",
    "FAMILIES",
    "ActionRepeat",
    "CheckSpaces",
    "Env",
    "NormalizeAction",
    "OneHotAction",
    "Randomize",
    "RandomizeSpec",
    "Space",
    "TimeLimit",
    "episode_log",
    "from_config",
    "list_envs",
    "make",
    "model_keys",
]
