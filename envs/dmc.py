"""DeepMind Control suite tasks behind the reverie contract.

Rendering is headless (``MUJOCO_GL=egl`` unless set, see ``_gl``). By default
frames have dm_control's lighting but no shadows and no reflections, which on
CPU (Mesa llvmpipe) cost most of the render time. MuJoCo draws each
shadow-casting light in its own additive pass; switching the shadow flag off
would merge it into the main pass, where the lit colour saturates (clamps at
1) before texturing, and dim the floor. So the shadow pass is kept but its
light frustum is shrunk to a speck (``_unshadowed_lighting``): nothing lands
in the shadow map, the light is added unshadowed, and the depth pass draws
almost nothing (about 3x the stock speed, half that of the flag off).
``shadows=True`` gives dm_control's stock frames. See docs/envs.md for the
measurements.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ._gl import close_at_exit, ensure_headless_gl
from .base import BASIC_KEYS, RawEnv, Space, basic_spaces

ensure_headless_gl()

#: Short names accepted for suite domains (DreamerV3 calls ball_in_cup "cup").
DOMAIN_ALIASES = {"cup": "ball_in_cup"}

#: dm_control marks unbounded actions with huge bounds (lqr uses ±1e10).
_UNBOUNDED = 1e9

#: Shadow map side used when shadows are off (only the map's edge is read).
_UNSHADOWED_MAP_SIZE = 16
#: Shadow frustum scale (spot lights) and half-width in metres (directional
#: lights) used when shadows are off: a 0.1 mm speck on the light's axis.
_UNSHADOWED_FRUSTUM = 1e-4


def _unshadowed_lighting(model: Any) -> None:
    """Makes shadow-casting lights light the scene as usual but cast no shadow.

    MuJoCo renders each shadow-casting light in a separate additive pass,
    masked by a shadow map rendered from the light's frustum. With the frustum
    shrunk to a speck no geometry lands in the map, every fragment samples its
    never-drawn edge (lit), and the depth pass rasterises almost nothing, so
    the frame keeps the stock lighting exactly, minus the shadows. The fields
    changed are visual only (``vis.map``, ``vis.quality``); physics is
    untouched. ``shadowsize`` is read when the GL context is made (first
    render).
    """
    model.vis.quality.shadowsize = _UNSHADOWED_MAP_SIZE
    model.vis.map.shadowscale = _UNSHADOWED_FRUSTUM
    model.vis.map.shadowclip = _UNSHADOWED_FRUSTUM


@functools.lru_cache(maxsize=1)
def _suite_tasks() -> tuple[tuple[str, str], ...]:
    from dm_control import suite

    return tuple(suite.ALL_TASKS)


def dmc_tasks() -> list[str]:
    """Every suite task as ``<domain>_<task>``, e.g. ``cartpole_swingup``."""
    return sorted(f"{d}_{t}" for d, t in _suite_tasks())


def parse_task(name: str) -> tuple[str, str]:
    """Splits ``<domain>_<task>`` using the suite's known domains.

    Domain names may contain underscores (``ball_in_cup_catch``,
    ``point_mass_easy``), so the name is matched against the suite's
    (domain, task) pairs rather than split at the first underscore. The aliases
    in ``DOMAIN_ALIASES`` are accepted too (``cup_catch``).

    Args:
        name: the task name.

    Returns:
        The ``(domain, task)`` pair.

    Raises:
        ValueError: when no suite task matches; the message lists them all.
    """
    for domain, task in _suite_tasks():
        if name == f"{domain}_{task}":
            return domain, task
    for alias, domain in DOMAIN_ALIASES.items():
        if name.startswith(alias + "_"):
            task = name[len(alias) + 1 :]
            if (domain, task) in _suite_tasks():
                return domain, task
    raise ValueError(f"unknown dmc task {name!r}; valid tasks: {', '.join(dmc_tasks())}")


class DMC(RawEnv):
    """One dm_control suite task.

    Observations: in ``vector`` mode each suite observation key flattened to a
    float32 1-D array (scalars become shape (1,)); in ``pixels`` mode only
    ``image`` (uint8 H×W×3); ``both`` gives both. Plus the basic keys. A step
    with discount 0 ends the episode as terminal; the suite's time limit ends it
    with ``is_last`` only.

    The raw action is float32 within the suite's bounds (``act_bounds``); wrap
    with ``NormalizeAction`` to act in [-1, 1].

    Args:
        domain_task: e.g. ``cartpole_swingup``, ``ball_in_cup_catch`` or ``cup_catch``.
        obs: ``vector``, ``pixels`` or ``both``.
        size: image (height, width).
        camera: camera id or name; default 2 for quadruped, else 0.
        seed: seed of the task's random state.
        shadows: render shadows (slow on CPU). Off (the default), the frames
            keep dm_control's lighting and lack only the shadows (see
            ``_unshadowed_lighting``); the model's ``vis.map`` and
            ``vis.quality.shadowsize`` are changed for that, so
            ``env.physics.render`` draws no shadows either.
        reflections: render reflections (1.25–1.6× slower on CPU).
        skybox: render the skybox (the background; on by default).
        antialias: multisample anti-aliasing (on by default; without it thin
            geoms such as cartpole's rail can vanish at 64×64).
        shadow_size: side of the shadow map texture when ``shadows`` is on
            (None keeps the model's, 2048 in the suite; ignored when off).
            512 renders nearly the same frames at a fraction of the cost on
            CPU.
    """

    def __init__(
        self,
        domain_task: str,
        obs: str = "vector",
        size: tuple[int, int] = (64, 64),
        camera: int | str | None = None,
        seed: int = 0,
        shadows: bool = False,
        reflections: bool = False,
        skybox: bool = True,
        antialias: bool = True,
        shadow_size: int | None = None,
    ) -> None:
        if obs not in ("vector", "pixels", "both"):
            raise ValueError(f"obs must be 'vector', 'pixels' or 'both', got {obs!r}")
        domain, task = parse_task(domain_task)
        from dm_control import suite

        self.name = f"{domain}_{task}"
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._obs_mode = obs
        self._size = (int(size[0]), int(size[1]))
        self._camera_id = camera if camera is not None else (2 if domain == "quadruped" else 0)
        # The shadow pass stays on either way; see _unshadowed_lighting.
        self._flags = {"shadow": True, "reflection": reflections, "skybox": skybox}
        # offsamples and shadowsize are read when the GL context is made, i.e.
        # at the first render.
        model = self._env.physics.model
        if not antialias:
            model.vis.quality.offsamples = 0
        if not shadows:
            _unshadowed_lighting(model)
        elif shadow_size is not None:
            model.vis.quality.shadowsize = int(shadow_size)
        self._camera: Any = None
        self._closed = False
        self._camera_physics: Any = None

        spec = self._env.action_spec()
        low = np.asarray(spec.minimum, np.float32)
        high = np.asarray(spec.maximum, np.float32)
        self._act_bounds = (
            np.where(np.abs(low) >= _UNBOUNDED, -np.inf, low).astype(np.float32),
            np.where(np.abs(high) >= _UNBOUNDED, np.inf, high).astype(np.float32),
        )
        self._act_space = Space(np.float32, spec.shape, float(low.min()), float(high.max()))

        space: dict[str, Space] = {}
        if obs in ("vector", "both"):
            for key, value in self._env.observation_spec().items():
                if key in BASIC_KEYS or key == "image":
                    raise ValueError(f"dmc observation key {key!r} clashes with a reserved key")
                space[key] = Space(np.float32, (max(1, int(np.prod(value.shape))),))
        if obs in ("pixels", "both"):
            space["image"] = Space(np.uint8, (*self._size, 3), 0, 255)
        space.update(basic_spaces())
        self._obs_space = space

    @property
    def act_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension (low, high); ±inf where the suite means unbounded."""
        return self._act_bounds

    @property
    def max_steps(self) -> float:
        """The suite's episode length in simulator steps (inf when none)."""
        return float(getattr(self._env, "_step_limit", float("inf")))

    @property
    def physics(self) -> Any:
        """The dm_control physics (for custom rendering or inspection)."""
        return self._env.physics

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        """Starts an episode; a ``seed`` reseeds the task's random state first."""
        if seed is not None:
            self._env.task.random.seed(seed)
        return self._obs(self._env.reset(), first=True)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """Applies ``action`` (within the suite bounds) for one control step."""
        return self._obs(self._env.step(action), first=False)

    def render(self) -> np.ndarray:
        """Renders the configured camera as uint8 (H, W, 3)."""
        physics = self._env.physics
        if self._camera is None or self._camera_physics is not physics:
            from dm_control.mujoco import engine

            height, width = self._size
            self._camera = engine.Camera(physics, height, width, self._camera_id)
            self._camera_physics = physics
            image = self._camera.render(render_flag_overrides=dict(self._flags))
            close_at_exit(self)  # after the GL context exists, see _gl
            return image
        return self._camera.render(render_flag_overrides=dict(self._flags))

    def close(self) -> None:
        """Frees the simulator."""
        if self._closed:
            return
        self._closed = True
        self._camera = self._camera_physics = None
        self._env.physics.free()  # frees the GL contexts too

    def _obs(self, ts: Any, first: bool) -> dict[str, np.ndarray]:
        obs: dict[str, np.ndarray] = {}
        if self._obs_mode in ("vector", "both"):
            for key, value in ts.observation.items():
                obs[key] = np.asarray(value, np.float32).reshape(-1)
        if self._obs_mode in ("pixels", "both"):
            obs["image"] = self.render()
        last = bool(ts.last())
        obs["reward"] = np.array(0.0 if first else (ts.reward or 0.0), np.float32)
        obs["is_first"] = np.array(first)
        obs["is_last"] = np.array(last)
        obs["is_terminal"] = np.array(last and ts.discount == 0)
        return obs
