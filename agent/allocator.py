"""Large CPU tensors reuse freed heap memory instead of fresh pages from the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and hands it back with ``munmap`` when freed, so each
such tensor of an update (V1 imagines 2,500 × 16 states: its 400-wide
activations are 64 MB) costs a page fault per 4 KiB page when first written.
On the 2-core VMs measured here an elementwise op over 16M floats took ~105 ms
instead of ~16 ms, and a V1 update 1.37× as long, a V2 one 1.21× (V3's ``1m``
tensors stay below the threshold: no change; docs/benchmarks.md, "Freed memory
kept in the heap"). With mmap off and a high trim threshold the
blocks come from the heap and are reused by the next update; resident memory
stays at the update's peak (up to ``trim_threshold`` above it) instead of
falling between updates.

Only glibc has ``mallopt``; elsewhere this does nothing (and returns False).
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def reuse_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Turns glibc's mmap for large blocks off, and keeps up to ``trim_threshold`` bytes of freed heap.

    Returns whether both settings took effect (False off Linux/glibc).
    Affects the whole process from this call on; blocks already mapped keep
    being unmapped when freed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc, nothing to tune
        log.info("not glibc: the allocator keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is a C int, so it is capped at 2 GiB − 1.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1


def reuse_freed_memory_when(wanted: bool, device_type: str) -> bool:
    """:func:`reuse_freed_memory` for a training process on ``device_type`` if ``wanted`` (config
    ``reuse_freed_memory``); only the CPU's allocations are glibc's. Returns whether it took effect."""
    return device_type == "cpu" and wanted and reuse_freed_memory()
