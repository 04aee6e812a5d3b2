"""Shared helpers for the health tests: real servers on 127.0.0.x."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from netutil import async_wait_until, free_port


class Backend:
    """A real aiohttp server whose health answer a test can change."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.port = 0
        self.status = 200
        self.body = "ok"
        self.hang = False
        self.deny_from: set[str] = set()
        self.hits = 0
        self.seen: list[tuple[str, str, str | None]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.seen.append((request.method, request.path, request.headers.get("Host")))
        if self.hang:
            await asyncio.sleep(3600)
        if request.remote in self.deny_from:
            return web.Response(status=503, text="not for you")
        return web.Response(status=self.status, text=self.body)

    async def start(self, port: int = 0) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port or free_port(self.host))
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def backend_factory() -> AsyncIterator[Callable[..., object]]:
    started: list[Backend] = []

    async def make(host: str = "127.0.0.1", port: int = 0) -> Backend:
        b = await Backend(host).start(port)
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Health tests are bounded tighter than the suite's default: 20 s, 60 s when slow.

    pytest-timeout (the `timeout` setting in pyproject.toml) enforces it; a test that sets
    its own `@pytest.mark.timeout` keeps it. The hook sees every item of the session, so
    it marks only those under this directory.
    """
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60 if item.get_closest_marker("slow") else 20))


def make_zone(regions, origin: str = "gslb.example.com"):
    """A Zone holding only what health needs: its regions."""
    from geodns.config.model import SOA, Zone

    soa = SOA(f"ns1.{origin}", f"hostmaster.{origin}", 1, 3600, 600, 86400, 30, 3600)
    return Zone(origin=origin, source="test", soa=soa, nameservers=(), ns_ttl=3600, ttl=30,
                regions={r.name: r for r in regions}, nodes={})


def region(name: str, *addresses: str, check=None, min_healthy: int = 1, balancer=None):
    import ipaddress

    from geodns.config.model import Endpoint, Region

    eps = tuple(Endpoint(ipaddress.ip_address(a)) for a in addresses)
    return Region(name, 0.0, 0.0, eps, min_healthy=min_healthy, check=check, balancer=balancer)


async def wait_for(predicate, timeout: float, step: float = 0.02) -> float:
    """Poll until predicate() is true; return the seconds it took (fail on timeout)."""
    return await async_wait_until(predicate, timeout, "condition not met", step)


def keypairs(*names: str) -> dict:
    """A fresh Ed25519 private key per node name."""
    from geodns.health import keys

    return {name: keys.generate() for name in names}


def peer(name: str, url: str, key) -> object:
    """A `Peer` entry for `name`, with the public half of its key."""
    from geodns.health import Peer, keys

    return Peer(name, url, keys.public_key_text(key))
