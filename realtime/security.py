"""ZeroMQ CURVE keys: generation, loading, and socket setup.

``reverie keys DIR`` writes a key pair for the learner (``learner.key``,
``learner.key_secret``) and one per client (``actor.key``…). With
``realtime.curve=true`` every socket encrypts and authenticates: the learner
only accepts clients whose public key is in its allow list, and clients only
talk to a server with the learner's public key.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


def generate_keys(directory: str | Path, names: tuple[str, ...] = ("learner", "actor")) -> dict[str, Path]:
    """Writes ``NAME.key`` (public) and ``NAME.key_secret`` for each name; returns the public key paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        public, secret = zmq.auth.create_certificates(str(directory), name)
        os.chmod(secret, 0o600)
        paths[name] = Path(public)
    return paths


def load_pair(path: str | Path) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file.

    Raises:
        ValueError: when the file is missing or holds no secret key.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"key file {path} does not exist (create keys with `reverie keys DIR`)")
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"key file {path} does not exist")
    return zmq.auth.load_certificate(str(path))[0]


class CurveServer:
    """Makes server sockets require CURVE with an allow list of client public keys.

    Args:
        context: the ZeroMQ context whose sockets are protected.
        secret_file: the server's ``.key_secret``.
        clients_dir: folder of the allowed clients' ``.key`` files.
    """

    def __init__(self, context: zmq.Context, secret_file: str | Path, clients_dir: str | Path) -> None:
        self.public, self.secret = load_pair(secret_file)
        self.auth = ThreadAuthenticator(context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(clients_dir))

    def protect(self, socket: zmq.Socket) -> None:
        """Makes ``socket`` a CURVE server with this key pair (call before bind)."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        """Stops the authenticator thread."""
        self.auth.stop()


def protect_client(socket: zmq.Socket, secret_file: str | Path, server_public_file: str | Path) -> None:
    """Sets a client socket to CURVE with its own key pair and the server's public key."""
    public, secret = load_pair(secret_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public(server_public_file)
