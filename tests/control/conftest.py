"""A real node in a thread: controller, DNS listeners and the admin app on 127.0.5.x.

The node runs its own event loop in a thread, so the tests can talk to it
with blocking clients (dnspython, urllib, the `geodns` CLI functions) exactly
as an operator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rdatatype
import pytest
from dnsclient import ask
from netutil import free_port

from geodns.control.admin import make_admin_app, start_admin
from geodns.control.controller import Controller
from geodns.dns.server import Listen, start_listeners
from geodns.dns.stats import Stats

ROOT = Path(__file__).resolve().parents[2]
ZONES = ROOT / "zones"
GEOIP = ROOT / "data" / "geoip-bundle.mmdb"
NET = "127.0.5"
TOKEN = "test-token-0123456789"




@dataclass
class Node:
    zones: Path
    state: Path
    host: str
    dns_port: int
    admin_port: int
    controller: Controller
    stats: Stats
    loop: asyncio.AbstractEventLoop
    token: str | None
    _stop: list[Any] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return f"{self.host}:{self.admin_port}"

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the node's loop (controller calls are not thread-safe)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def query(self, name: str, client: str | None = None, rdtype: str = "A") -> dns.message.Message:
        ecs = f"{client}/32" if client is not None else None
        return ask((self.host, self.dns_port), name, rdtype, ecs=ecs, timeout=2)


def start_node(tmp: Path, index: int, token: str | None = TOKEN, with_state: bool = True) -> Node:
    zones = tmp / "zones"
    if not zones.exists():
        shutil.copytree(ZONES, zones)
        shutil.copy(ROOT / "data" / "latency.yaml", tmp / "latency.yaml")
        for path in zones.glob("*.yaml"):
            path.write_text(path.read_text().replace("../data/latency.yaml", "../latency.yaml"))
    state = tmp / "state.json"
    host = f"{NET}.{index}"
    controller = Controller(str(zones), str(GEOIP), str(state) if with_state else None, cache_size=10_000)
    stats = Stats()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            controller.start()
            port = free_port(host)
            closers = await start_listeners(controller.ref, [Listen(host, port)], stats=stats)
            admin_port = free_port(host)
            runner = await start_admin(make_admin_app(controller, token, stats.export), host, admin_port)
            box.update(port=port, admin_port=admin_port, closers=closers, runner=runner)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop)
    assert ready.wait(15), "node did not start"
    if "error" in box:
        raise box["error"]
    node = Node(zones, state, host, box["port"], box["admin_port"], controller, stats, loop, token)

    async def stop() -> None:
        for close in box["closers"]:
            close()
        await box["runner"].cleanup()

    def shutdown() -> None:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    node._stop.append(shutdown)
    return node


@contextlib.contextmanager
def running_node(tmp: Path, index: int, token: str | None = TOKEN) -> Iterator[Node]:
    """A node started in a thread, stopped on leaving."""
    n = start_node(tmp, index, token=token)
    try:
        yield n
    finally:
        for stop in n._stop:
            stop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running_node(tmp_path, 10) as n:
        yield n


@pytest.fixture
def tokenless_node(tmp_path: Path) -> Iterator[Node]:
    with running_node(tmp_path, 11, token=None) as n:
        yield n


def a_records(message: dns.message.Message) -> list[str]:
    return sorted(rr.address for rrset in message.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset)


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 10) -> tuple[int, Any, dict[str, str]]:
    """One HTTP exchange, never through a proxy: status, the body (parsed if JSON), headers."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, raw.decode(errors="replace"), got
