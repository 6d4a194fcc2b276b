"""Status files and the status query (``reverie status``): robot side, no torch.

The learner and each actor write their counters as JSON files that a reader
never sees half-written; ``reverie status address=…`` asks a running learner's
status socket instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import zmq


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Writes ``data`` as JSON through a temporary file and a rename, so a reader never sees half of it.

    Values JSON cannot hold (numpy scalars, say) are written as ``float``.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(data, default=float))
    os.replace(tmp, path)


def query_status(address: str, timeout_s: float = 2.0, secure: Any = None) -> dict[str, Any]:
    """Asks a learner's status socket for its counters.

    Args:
        address: the learner's status address (``tcp://HOST:PORT+2`` or ``ipc://…``).
        timeout_s: how long to wait for the answer.
        secure: optional callable that configures CURVE on the socket.

    Raises:
        TimeoutError: when no learner answers within ``timeout_s``.
    """
    context: zmq.Context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    if secure is not None:
        secure(socket)
    socket.connect(address)
    try:
        socket.send(b"status")
        if not socket.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no learner answered at {address} within {timeout_s} s")
        return json.loads(socket.recv())
    finally:
        socket.close(0)
