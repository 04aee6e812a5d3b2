"""Shared by every test suite: a port free for both TCP and UDP, waiting for a
condition, stopping a process it started."""

from __future__ import annotations

import asyncio
import inspect
import socket
import subprocess
import time
from collections.abc import Callable


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


class _Poll:
    """One wait: is the condition met, and has the time run out (AssertionError)?"""

    def __init__(self, timeout: float, what: str | Callable[[], str]) -> None:
        self.timeout, self.what = timeout, what
        self.start = time.monotonic()

    def met(self, value: object) -> bool:
        if value:
            return True
        if self.elapsed > self.timeout:
            what = self.what() if callable(self.what) else self.what
            raise AssertionError(f"not within {self.timeout}s: {what}")
        return False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str],
               step: float = 0.05) -> float:
    """Poll `predicate` until it is true; return the seconds that took.

    A test waits for the event it needs (an answer changed, a line logged, a counter moved)
    instead of sleeping a fixed time: it goes on as soon as the event happens, and fails with
    `what` when it has not happened after `timeout` seconds. `what` may be a callable, for a
    message made at failure time (a log's tail).
    """
    poll = _Poll(timeout, what)
    while not poll.met(predicate()):
        time.sleep(step)
    return poll.elapsed


async def async_wait_until(predicate: Callable[[], object], timeout: float, what: str | Callable[[], str],
                           step: float = 0.05) -> float:
    """`wait_until` for a test on an event loop: it sleeps without blocking the loop, and
    `predicate` may be a coroutine function (one that asks a server in a thread, say)."""
    poll = _Poll(timeout, what)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if poll.met(value):
            return poll.elapsed
        await asyncio.sleep(step)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process the test started, by its pid: SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_port(host: str, port: int, within: float = 15.0) -> None:
    """Until something listens on host:port (AssertionError after `within` seconds)."""

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((host, port)) == 0

    wait_until(listening, within, f"nothing listening on {host}:{port}")
