"""Large CPU tensors come from the heap after ``reuse_freed_memory`` (glibc), not from fresh mmaps."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")

# Run in a child: the setting is process-wide and would change every later test's allocations.
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import torch
    from reverie.agent.allocator import reuse_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    if sys.argv[1] == "on":
        assert reuse_freed_memory()
    before = libc.mallinfo2().hblkhd
    x = torch.ones(2500 * 16 * 400)  # 64 MB, above glibc's largest mmap threshold (32 MiB)
    mapped = libc.mallinfo2().hblkhd - before
    print(mapped)
    """
)


@pytest.mark.parametrize("setting", ["off", "on"])
def test_a_64_mb_tensor_is_mapped_only_without_the_setting(setting):
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    mapped = int(out.stdout.split()[-1])
    if setting == "off":
        assert mapped >= 64_000_000  # glibc's default: a fresh mmap, page-faulted on first write
    else:
        assert mapped == 0  # from the heap, which keeps it for the next update


def test_the_training_setup_applies_it_on_the_cpu_only_when_asked(monkeypatch, tiny_overrides, tmp_path):
    from reverie.agent import allocator, parts
    from reverie.cli.config import compose

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(parts, "RunBook", _stop)
    for flag, expected in (("true", [1]), ("false", [])):
        calls.clear()
        cfg = compose([*tiny_overrides, "device=cpu", f"reuse_freed_memory={flag}", f"logdir={tmp_path}"])
        with pytest.raises(_Stop):
            parts.assemble_run(cfg, spaces=lambda book: None)
        assert calls == expected


class _Stop(Exception):
    pass


def _stop(*args, **kwargs):
    """In place of the run book: the test needs assemble_run only up to there."""
    raise _Stop
