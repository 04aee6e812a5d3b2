"""Fixtures that start real backends (subprocesses) and real balancers on 127.0.4.x."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from netutil import free_port

from geodns.balance import Balancer, parse

HERE = Path(__file__).parent
NET = "127.0.4"
"""This test package's own loopback /24, away from other suites' addresses."""


@dataclass
class BackendProc:
    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


async def start_backends(count: int, first: int = 10) -> list[BackendProc]:
    """Start `count` backends b0..b{count-1} on 127.0.4.{first+i}; wait until they listen."""
    procs = []
    for i in range(count):
        host = f"{NET}.{first + i}"
        port = free_port(host)
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "backend.py"), f"b{i}", host, str(port)],
            stdout=subprocess.PIPE,
        )
        procs.append(BackendProc(f"b{i}", host, port, proc))
    loop = asyncio.get_running_loop()
    for b in procs:
        assert b.proc.stdout is not None
        line = await asyncio.wait_for(loop.run_in_executor(None, b.proc.stdout.readline), 15)
        assert line.strip() == b"ready", f"backend {b.name} did not start"
    return procs


def stop_backends(procs: list[BackendProc]) -> None:
    for b in procs:
        b.kill()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await backends(n, first=10)`; every backend started is killed at teardown."""
    started: list[BackendProc] = []

    async def make(count: int, first: int = 10) -> list[BackendProc]:
        procs = await start_backends(count, first)
        started.extend(procs)
        return procs

    yield make
    stop_backends(started)


@pytest.fixture
async def balancer() -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await balancer(config_dict)` starts an in-process Balancer on 127.0.4.2."""
    started: list[Balancer] = []

    async def make(data: dict[str, Any], path: str | None = None) -> Balancer:
        host = f"{NET}.2"
        data = dict(data)
        data.setdefault("listen", [f"{host}:{free_port(host)}"])
        data.setdefault("admin", {"listen": f"{host}:{free_port(host)}", "token": "s3cret"})
        b = Balancer(parse(data, "test.yaml"), path)
        await b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        if not b.closing:
            await b.stop()


def url(b: Balancer, path: str = "/") -> str:
    a = b.addresses[0]
    return f"http://{a.host}:{a.port}{path}"


def admin_url(b: Balancer, path: str) -> str:
    a = b.admin_address
    assert a is not None
    return f"http://{a.host}:{a.port}{path}"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for `condition()` (a coroutine function or a plain one) to be true, checking
    every 20 ms; AssertionError after `timeout` seconds. A test waits on the event it
    needs, never for a fixed time that a loaded machine may not honour."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def session_from(source: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client whose connections come from `source` (for ip_hash: one client per address)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s
