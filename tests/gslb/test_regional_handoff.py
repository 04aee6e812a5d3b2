"""The global tier and the regional tier together, all real processes and sockets.

A `geodns balance` in us-east is named as that region's balancer check and its
capacity report; `geodns serve` steers `app` to us-east until the balancer
reports saturation or stops answering, then to us-west, and back.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from netutil import stop_process

from .cluster import ask as cluster_ask
from .cluster import east_west_zone, free_port, start, wait_port

pytestmark = pytest.mark.slow


def ask(host: str, port: int, name: str) -> str | None:
    addresses = cluster_ask(host, port, name)
    return addresses[0] if addresses else None


async def wait_for_answer(host: str, port: int, name: str, want: str, within: float) -> float:
    start = time.monotonic()
    got = None
    while time.monotonic() - start < within:
        got = await asyncio.to_thread(ask, host, port, name)
        if got == want:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name}: wanted {want} within {within}s, last answer {got}")


@pytest.fixture
async def backend():
    """One slow-capable backend: /slow waits until released."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 20)
        return web.Response(text="done")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/health", ok)
    app.router.add_get("/", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    host, port = "127.0.0.32", free_port("127.0.0.32")
    await web.TCPSite(runner, host, port).start()
    yield host, port, release
    release.set()
    await runner.cleanup()


async def test_global_tier_steers_around_a_saturated_or_dead_region(tmp_path: Path, backend) -> None:
    bhost, bport, release = backend
    lb_host = "127.0.0.31"
    lb_port, lb_admin = free_port(lb_host), free_port(lb_host)
    (tmp_path / "lb.yaml").write_text(
        f"""
region: us-east
listen: [{lb_host}:{lb_port}]
admin: {{listen: {lb_host}:{lb_admin}}}
saturation: 0.5
pools:
  web:
    max_conns: 4
    backends: [{bhost}:{bport}]
"""
    )
    dns_host = "127.0.0.33"
    dns_port = free_port(dns_host)
    zones = tmp_path / "zones"
    zones.mkdir()
    load = f"http://{lb_host}:{lb_admin}/v1/load"
    balancer = f"{{type: http, host: {lb_host}, port: {lb_admin}, path: /v1/load, interval: 0.3, timeout: 0.25, fall: 2, rise: 1}}"
    (zones / "z.yaml").write_text(east_west_zone(
        "app", "[healthy, {capacity: {threshold: 0.5}}, geo_proximity, {limit: 1}]",
        f"capacity_url: {load}\n    balancer: {balancer}",
    ))
    (tmp_path / "node.yaml").write_text(f"node: n1\nstate_dir: {tmp_path / 'state'}\n")
    lb = start([sys.executable, "-m", "geodns.balance", "--config", str(tmp_path / "lb.yaml")], tmp_path / "lb.log")
    server = start(
        [
            sys.executable, "-m", "geodns", "serve", "--zones", str(zones), "--geoip", "none",
            "--listen", f"{dns_host}:{dns_port}", "--admin", "none", "--workers", "1",
            "--node", str(tmp_path / "node.yaml"), "--state", str(tmp_path / "admin.json"),
        ],
        tmp_path / "serve.log",
    )
    held: list[asyncio.Task] = []
    try:
        wait_port(lb_host, lb_admin)
        wait_port(dns_host, dns_port)
        # Unlocated clients get the default region while it is up and unloaded.
        await wait_for_answer(dns_host, dns_port, "app.gslb.example.test", "192.0.2.10", 10)

        # Saturate: 3 requests held in flight on a capacity of 4 is 75% > 50%.
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async def hold() -> None:
                async with session.get(f"http://{lb_host}:{lb_port}/slow") as r:
                    await r.read()

            held = [asyncio.create_task(hold()) for _ in range(3)]
            moved = await wait_for_answer(dns_host, dns_port, "app.gslb.example.test", "192.0.2.20", 10)
            async with session.get(load) as r:
                report = await r.json()
            assert report["saturated"] is True and report["in_flight"] == 3
            release.set()
            await asyncio.wait_for(asyncio.gather(*held), 10)
            back = await wait_for_answer(dns_host, dns_port, "app.gslb.example.test", "192.0.2.10", 10)
        print(f"saturated -> us-west after {moved:.1f}s; unloaded -> us-east after {back:.1f}s")

        # The balancer dies: its check fails and the region leaves the answers.
        stop_process(lb)
        gone = await wait_for_answer(dns_host, dns_port, "app.gslb.example.test", "192.0.2.20", 10)
        print(f"balancer stopped -> us-west after {gone:.1f}s")
        assert server.poll() is None
    finally:
        for task in held:
            task.cancel()
        stop_process(lb)
        stop_process(server)
