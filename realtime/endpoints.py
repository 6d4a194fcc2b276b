"""Where the learner's sockets are, and CURVE set-up for both sides.

``ipc`` (one machine): socket files in ``realtime.ipc_dir``, by default a
short folder under /tmp derived from the logdir (a socket path must stay under
~100 characters). ``tcp``: the learner binds ``realtime.bind`` on ``port``
(experience), ``port+1`` (weights) and ``port+2`` (status); actors connect to
``realtime.host``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:  # only annotations: the CLI composes the config, this module needs no omegaconf of its own
    from omegaconf import DictConfig


@dataclasses.dataclass(frozen=True)
class Endpoints:
    """The three addresses of one learner."""

    experience: str
    weights: str
    status: str


def endpoints(cfg: DictConfig, *, bind: bool) -> Endpoints:
    """The learner's addresses: to bind (``bind=True``) or to connect to.

    Raises:
        ValueError: for an unknown transport.
    """
    rt = cfg.realtime
    if rt.transport == "ipc":
        folder = Path(rt.ipc_dir) if rt.ipc_dir else _default_ipc_dir(cfg.logdir)
        folder.mkdir(parents=True, exist_ok=True)
        return Endpoints(*(f"ipc://{folder / name}" for name in ("experience", "weights", "status")))
    if rt.transport == "tcp":
        host = rt.bind if bind else rt.host
        return Endpoints(*(f"tcp://{host}:{int(rt.port) + i}" for i in range(3)))
    raise ValueError(f"unknown realtime.transport {rt.transport!r}; valid: ipc, tcp")


def _default_ipc_dir(logdir: str) -> Path:
    digest = hashlib.sha1(str(Path(logdir).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"reverie-{digest}"


def check_plaintext(cfg: DictConfig) -> None:
    """Refuses tcp without CURVE unless ``realtime.insecure=true``, and warns when it is allowed.

    Over tcp, anyone who reaches the ports could otherwise inject experience
    into the learner or a policy into a robot; ipc sockets are files on this
    machine, guarded by their permissions.

    Raises:
        ValueError: for tcp without CURVE and without ``realtime.insecure=true``.
    """
    rt = cfg.realtime
    if rt.transport != "tcp" or rt.curve:
        return
    if not rt.get("insecure", False):
        raise ValueError(
            "realtime.transport=tcp without realtime.curve=true would send experience and weights in plaintext and let anyone"
            " who reaches the ports inject them; create keys with `reverie keys DIR learner ACTOR…` and set realtime.curve=true"
            " realtime.keys=DIR, or set realtime.insecure=true to accept that"
        )
    print("reverie: WARNING: tcp without CURVE (realtime.insecure=true): plaintext, unauthenticated sockets", file=sys.stderr)


def client_secret(keys: Path, name: str) -> Path:
    """The key file a client called ``name`` uses: ``NAME.key_secret``, else ``actor.key_secret``, else the only client key.

    ``reverie status`` is a client without an actor id of its own: it takes
    whichever client key the folder holds (``reverie keys keys learner robot1``
    makes just ``robot1``'s).

    Raises:
        ValueError: when no key fits, naming what the folder holds.
    """
    for candidate in (keys / f"{name}.key_secret", keys / "actor.key_secret"):
        if candidate.exists():
            return candidate
    clients = sorted(p for p in keys.glob("*.key_secret") if p.name != "learner.key_secret")
    if clients:
        return clients[0]
    held = ", ".join(sorted(p.name for p in keys.glob("*.key*"))) or "nothing"
    raise ValueError(f"no client key in {keys} for {name!r} (it holds {held}); create one with `reverie keys {keys} learner {name}`")


class Security:
    """CURVE for every socket of one process (``realtime.curve=true``), or nothing.

    The learner is the server: it holds ``learner.key_secret`` and accepts
    clients whose public keys (``*.key``) are in the key folder. An actor is a
    client with ``<actor>.key_secret`` (falling back to ``actor.key_secret``)
    and the learner's public key.

    Args:
        cfg: the composed config.
        context: the process's ZeroMQ context.
        server: True in the learner.
        name: the client's key name (an actor id).

    Raises:
        ValueError: when a key file is missing.
    """

    def __init__(self, cfg: DictConfig, context: zmq.Context, *, server: bool, name: str = "actor") -> None:
        self.enabled = bool(cfg.realtime.curve)
        self._server = None
        if not self.enabled:
            check_plaintext(cfg)
            return
        from .security import CurveServer, load_pair, load_public

        keys = Path(cfg.realtime["keys"])  # item access: .keys is the DictConfig method
        if server:
            self._server = CurveServer(context, keys / "learner.key_secret", keys)
        else:
            self._secret = client_secret(keys, name)
            self._server_public = keys / "learner.key"
            load_pair(self._secret)  # fail now, with the file's name, not at the first send
            load_public(self._server_public)

    def __call__(self) -> Callable[[zmq.Socket], None] | None:
        """The socket set-up function for the channels (None without CURVE)."""
        if not self.enabled:
            return None
        if self._server is not None:
            return self._server.protect
        from .security import protect_client

        return lambda socket: protect_client(socket, self._secret, self._server_public)

    def stop(self) -> None:
        """Stops the authenticator thread (server side)."""
        if self._server is not None:
            self._server.stop()
