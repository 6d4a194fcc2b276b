"""Headless OpenGL selection for MuJoCo rendering.

MuJoCo and dm_control read ``MUJOCO_GL`` when they are first imported, so this
must run before them. On Linux we default to ``egl``: with a GPU it uses the
vendor's EGL, without one Mesa's llvmpipe (software, needs no display). A value
the user has set is never overridden.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from typing import Any

#: The backend chosen when ``MUJOCO_GL`` is unset (Linux only).
DEFAULT_MUJOCO_GL = "egl"


def ensure_headless_gl() -> str | None:
    """Sets ``MUJOCO_GL`` to ``egl`` on Linux unless already set.

    Returns:
        The value of ``MUJOCO_GL`` afterwards (None when left unset).
    """
    if sys.platform.startswith("linux"):
        os.environ.setdefault("MUJOCO_GL", DEFAULT_MUJOCO_GL)
    return os.environ.get("MUJOCO_GL")


_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()
_THREADS_HOOKED = False


def _close_open_envs() -> None:
    for env in list(_OPEN):
        try:
            env.close()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit.
            pass


def close_at_exit(env: Any) -> None:
    """Closes ``env`` at interpreter exit while its GL display still exists.

    dm_control and mujoco.egl each register ``eglTerminate`` with ``atexit``
    and share one EGL display, so whichever runs first breaks the other's
    context cleanup (noisy "Exception ignored" tracebacks at exit). The handler
    here is re-registered on every call so that it is the most recent one and,
    ``atexit`` being last-in first-out, runs before both. It is also hooked
    into ``threading``'s exit hooks, which run earlier still (osmesa needs it).

    Args:
        env: any object with ``close()``; held weakly.
    """
    global _THREADS_HOOKED
    _OPEN.add(env)
    atexit.unregister(_close_open_envs)
    atexit.register(_close_open_envs)
    # With osmesa, dm_control renders on a worker thread whose pool is shut
    # down by an exit hook of threading (registered when concurrent.futures is
    # imported); those hooks run last-in first-out and before atexit's.
    register = getattr(threading, "_register_atexit", None)
    if register is not None and not _THREADS_HOOKED and "concurrent.futures.thread" in sys.modules:
        register(_close_open_envs)
        _THREADS_HOOKED = True
