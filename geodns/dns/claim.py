"""One node per DNS address: a second `geodns serve` on an address a running one serves refuses to start.

The data plane binds with SO_REUSEPORT so that a node's workers share their
port; but the kernel lets any process of the same user join, and it then
splits the queries between two nodes (two configurations) without a word. So
before it binds, a node claims each of its addresses:

1. a lock: an abstract Unix socket named after the address and port, held
   for the node's life (the kernel drops it when the process ends, however it
   ends), so that two nodes starting at the same moment cannot both pass;
2. a probe: a bind of the address without SO_REUSEPORT (UDP, and TCP with
   SO_REUSEADDR so that old TIME_WAIT connections do not count), which fails
   while any socket serves it, this node's or another program's, including a
   wildcard address that covers it.

The workers then bind with SO_REUSEPORT as before. Port 0 (any free port) is
not claimed: it cannot collide.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import Protocol


class _Address(Protocol):
    host: str
    port: int


class AddressInUse(OSError):
    """Another process already serves one of the node's DNS addresses; the message names it."""


def lock_name(host: str, port: int) -> str:
    """The abstract socket name that stands for serving `host`:`port` (one spelling per address)."""
    return f"\0geodns-dns/{ipaddress.ip_address(host.split('%', 1)[0]).compressed}/{port}"


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def claim(listens: Iterable[_Address]) -> list[socket.socket]:
    """Claim every address (see the module doc); returns the lock sockets, to keep open while
    serving (close them to release). Raises AddressInUse and holds nothing when one is taken."""
    held: list[socket.socket] = []
    names: set[str] = set()
    try:
        for listen in listens:
            name = lock_name(listen.host, listen.port)
            if listen.port == 0 or name in names:  # any free port; or the same address twice
                continue
            names.add(name)
            where = _where(listen.host, listen.port)
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            held.append(lock)
            try:
                lock.bind(name)
            except OSError:
                raise AddressInUse(
                    f"{where} is already served by another geodns serve on this host; stop it first "
                    "(two nodes on one address would split the queries between them)"
                ) from None
            _probe(listen.host, listen.port, where)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def _probe(host: str, port: int, where: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    transport = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                    raise AddressInUse(
                        f"{where} ({transport}) is already in use by another process "
                        f"({exc.strerror}); stop it first, or listen elsewhere"
                    ) from None
                raise
