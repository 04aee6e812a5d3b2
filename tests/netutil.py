"""Shared by every test suite: finding a port that is free for both TCP and UDP."""

from __future__ import annotations

import socket
import time


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


def wait_port(host: str, port: int, within: float = 15.0) -> None:
    """Until something listens on host:port (AssertionError after `within` seconds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port}")
