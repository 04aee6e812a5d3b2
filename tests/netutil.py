"""Shared by every test suite: finding a port that is free for both TCP and UDP."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` (IPv4 or IPv6 literal)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = t.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP on {host}")
