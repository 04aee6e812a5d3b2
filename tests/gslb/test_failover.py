"""Whole-region failover across a three-node cluster of real `geodns serve` processes.

Backends are real aiohttp servers on 127.0.0.x; every node probes them and
exchanges what it sees with the others over signed HTTP. Measured: seconds
from a data centre dying to every node answering without it, and back; a
drain through one node's admin API moves every node's answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from natsutil import nats_servers, needs_nats

from .cluster import all_answer, east_west_zone, free_port, make_cluster

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"
INTERVAL, FALL, RISE = 0.3, 2, 2


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


class Backend:
    def __init__(self, host: str):
        self.host = host
        self.port = free_port(host)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", _ok)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        await self.runner.cleanup()


def zone_text(east: Backend, west: Backend, interval: float = INTERVAL, timeout: float = 0.25) -> str:
    def check(b: Backend) -> str:
        return (
            f"{{type: http, host: {b.host}, port: {b.port}, path: /health, interval: {interval},"
            f" timeout: {timeout}, fall: {FALL}, rise: {RISE}, jitter: 0.05}}"
        )

    return east_west_zone("www", "[healthy, geo_proximity, {limit: 1}]", f"check: {check(east)}", f"check: {check(west)}")


async def start_cluster(tmp_path: Path, backend_hosts: tuple[str, str], first_host: int,
                        exchange_interval: float = 0.3, nats: list[str] | None = None, **zone: float):
    """Two backends, their zone, and three nodes answering us-east; stop with `stop_cluster`.
    `nats`: the NATS servers the nodes exchange through (default: the built-in HTTP exchange)."""
    east, west = Backend(backend_hosts[0]), Backend(backend_hosts[1])
    await east.start()
    await west.start()
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "z.yaml").write_text(zone_text(east, west, **zone))
    nodes = make_cluster(tmp_path, ["n1", "n2", "n3"], first_host, exchange_interval=exchange_interval, nats=nats)
    return nodes, zones, east, west


async def stop_cluster(nodes, east: Backend, west: Backend) -> None:
    for node in nodes:
        node.stop()
    await west.stop()
    if east.runner is not None:
        await east.runner.cleanup()


@pytest.fixture(params=["http", pytest.param("nats", marks=needs_nats)])
def exchange(request, tmp_path: Path) -> Iterator[list[str] | None]:
    """The exchange the cluster uses: None (built-in HTTP) or the URLs of a
    `nats-server` with JetStream started here on loopback."""
    if request.param == "http":
        yield None
        return
    with nats_servers(tmp_path / "nats", "127.0.0.69") as servers:
        yield [s.url for s in servers]


async def test_region_failover_and_drain_reach_every_node(tmp_path: Path, exchange) -> None:
    nodes, zones, east, west = await start_cluster(tmp_path, ("127.0.0.61", "127.0.0.62"), 51, nats=exchange)
    try:
        for node in nodes:
            node.start(zones, TOKEN)
        await all_answer(nodes, ["192.0.2.10"], 15)

        # A data centre dies: every node stops answering it.
        await east.stop()
        down = await all_answer(nodes, ["192.0.2.20"], 10)
        bound = FALL * INTERVAL + 0.3 + 1.0  # fall x interval + one exchange period + probe timeout slack
        print(f"us-east down -> gone from all 3 nodes in {down:.2f}s (bound {bound:.1f}s)")
        assert down < bound + 1.5

        # It comes back: after rise successes (and the flap hold-down) every node answers it again.
        await east.start()
        up = await all_answer(nodes, ["192.0.2.10"], 20)
        print(f"us-east back -> in all 3 nodes' answers after {up:.2f}s")

        # An operator drains it through one node: the drain reaches every node.
        async with aiohttp.ClientSession() as session:
            url = f"http://{nodes[0].admin}/v1/drain"
            async with session.post(url, json={"target": "us-east", "reason": "maintenance"}) as r:
                assert r.status in (401, 403), "writes need the token"
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with session.post(url, json={"target": "us-east", "reason": "maintenance"}, headers=headers) as r:
                assert r.status == 200, await r.text()
            drained = await all_answer(nodes, ["192.0.2.20"], 5)
            print(f"drain via n1 -> all 3 nodes moved in {drained:.2f}s")
            async with session.post(f"http://{nodes[0].admin}/v1/undrain", json={"target": "us-east"}, headers=headers) as r:
                assert r.status == 200, await r.text()
            await all_answer(nodes, ["192.0.2.10"], 5)
            if exchange:
                # Over NATS, every node's status shows who drained and undrained it, from the bucket.
                async def history() -> list:
                    async with session.get(f"http://{nodes[2].admin}/v1/status") as r:
                        return (await r.json())["drain_history"].get("us-east", [])

                deadline = time.monotonic() + 5
                while [(e["active"], e["by"]) for e in await history()][-2:] != [(True, "n1"), (False, "n1")]:
                    assert time.monotonic() < deadline, await history()
                    await asyncio.sleep(0.1)
                assert (await history())[-2]["reason"] == "maintenance"
        for node in nodes:
            assert node.proc.poll() is None, f"{node.name} exited"
    finally:
        await stop_cluster(nodes, east, west)


async def test_failover_at_a_one_second_interval_moves_every_node_within_five_seconds(tmp_path: Path, exchange) -> None:
    """Production-like timing: 1 s probes, 1 s exchange, signed per-node messages."""
    nodes, zones, east, west = await start_cluster(tmp_path, ("127.0.0.63", "127.0.0.64"), 141, nats=exchange,
                                                   exchange_interval=1.0, interval=1.0, timeout=0.5)
    try:
        for node in nodes:
            node.start(zones, TOKEN)
        await all_answer(nodes, ["192.0.2.10"], 15)
        await asyncio.sleep(1.0)
        await east.stop()
        down = await all_answer(nodes, ["192.0.2.20"], 10)
        print(f"\n1 s interval, {'nats' if exchange else 'http'}: us-east down -> gone from all 3 nodes in {down:.2f}s "
              f"(fall {FALL} x 1 s + exchange 1 s + timeout 0.5 s = {FALL + 1.5:.1f}s)")
        assert down < 5.0
    finally:
        await stop_cluster(nodes, east, west)
