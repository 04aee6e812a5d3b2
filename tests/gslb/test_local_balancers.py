"""Regions fronted by a real HAProxy or nginx, read through their own status pages.

Each test starts the balancer from its Debian package with a generated
config on loopback ports, real aiohttp backends behind it, and two `geodns
serve` nodes exchanging views. Killing the pool behind HAProxy takes the
region out of every node's answers; connections held open past the
balancer's limits make the `capacity` step move new clients away, and back
when they are released. Skipped only when the binary is missing (CI
installs both: .ci/setup).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from netutil import stop_process

from .cluster import all_answer as cluster_all_answer
from .cluster import east_west_zone, free_port, make_cluster, start, wait_port

pytestmark = pytest.mark.slow

TOKEN = "test-admin-token"
NAME = "app.gslb.example.test"
EAST, WEST = ["192.0.2.10"], ["192.0.2.20"]
LB_HOST, BACKEND_HOST = "127.0.0.71", "127.0.0.72"


def binary(name: str) -> str:
    """The balancer's binary (Debian puts both in /usr/sbin), or skip."""
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}") if os.access(p, os.X_OK)), None)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {name}; .ci/setup installs it)")
    return found


class Backends:
    """Real aiohttp servers: /health answers ok, /slow is held until `release()`."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port(BACKEND_HOST) for _ in range(count)]
        self.runners: list[web.AppRunner | None] = [None] * count
        self.released = asyncio.Event()

    async def _slow(self, request: web.Request) -> web.Response:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), 30)
        return web.Response(text="done")

    async def start(self, i: int) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", ok)
        app.router.add_get("/slow", self._slow)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, BACKEND_HOST, self.ports[i], reuse_address=True).start()
        self.runners[i] = runner

    async def start_all(self) -> None:
        for i in range(len(self.ports)):
            await self.start(i)

    async def kill(self, i: int) -> None:
        runner, self.runners[i] = self.runners[i], None
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        self.released.set()
        for i in range(len(self.ports)):
            await self.kill(i)


def zone(balancer: str) -> str:
    return east_west_zone("app", "[healthy, {capacity: {threshold: 0.8}}, geo_proximity, {limit: 1}]", f"balancer: {balancer}")


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, balancer: str, first_host: int):
    """Two serving nodes for a zone whose us-east region has `balancer`."""
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "z.yaml").write_text(zone(balancer))
    nodes = make_cluster(tmp_path, ["n1", "n2"], first_host)
    try:
        for node in nodes:
            # Off the event loop: the backends answering HAProxy's checks live on it.
            await asyncio.to_thread(node.start, zones, TOKEN)
        yield nodes
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)


async def all_answer(nodes, want: list[str], within: float) -> float:
    """Seconds until every node answers `want` for NAME over DNS."""
    return await cluster_all_answer(nodes, want, within, NAME, step=0.2)


def status(node) -> dict:
    with urllib.request.urlopen(f"http://{node.admin}/v1/status", timeout=5) as r:
        return json.loads(r.read())


async def region_shows(node, want, within: float = 10) -> dict:
    """us-east's entry on the node's status page once `want(entry)` holds."""
    begin, entry = time.monotonic(), {}
    while time.monotonic() - begin < within:
        entry = (await asyncio.to_thread(status, node))["regions"]["us-east"]
        if want(entry):
            return entry
        await asyncio.sleep(0.2)
    raise AssertionError(f"status page of {node.name} never showed it; last: {entry}")


def query(node) -> str:
    """`geodns query --admin`: the node's answer and its reasons, as an operator reads them."""
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "query", NAME, "--client", "198.51.100.7", "--admin", node.admin],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


TIMING = "interval: 0.3, timeout: 0.25, fall: 2, rise: 1, jitter: 0.05"
"""The balancer check's timing in these tests."""


async def fill_and_release(nodes, backends: Backends, url: str, count: int, load: str) -> tuple[float, float]:
    """Hold `count` requests open through the balancer until every node steers new clients
    away, the status page's load line matches `load` and `geodns query` says why; release
    them and wait until every node steers back. Seconds to each."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        async def one() -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=40)) as r:
                    await r.read()

        held = [asyncio.create_task(one()) for _ in range(count)]
        try:
            moved = await all_answer(nodes, WEST, 15)
            await region_shows(nodes[0], lambda r: re.match(load, r["capacity"]["detail"] or ""))
            assert "removed saturated us-east" in await asyncio.to_thread(query, nodes[1])
            backends.released.set()
            await asyncio.wait_for(asyncio.gather(*held), 15)
        finally:
            for task in held:
                task.cancel()
    return moved, await all_answer(nodes, EAST, 15)


# --- HAProxy ------------------------------------------------------------------------------

HAPROXY_CFG = """
global
    maxconn 500
defaults
    mode http
    timeout connect 1s
    timeout client 40s
    timeout server 40s
    timeout queue 40s
    timeout check 2s
frontend stats
    bind {host}:{stats}
    stats enable
    stats uri /stats
frontend fe
    bind {host}:{front}
    default_backend www
backend www
    option httpchk GET /health
    default-server inter 200ms fall 2 rise 1 maxconn 2
{servers}
"""


async def test_haproxy_pool_down_fails_the_region_over_and_full_steers_around_it(tmp_path: Path) -> None:
    haproxy = binary("haproxy")
    backends = Backends(3)
    await backends.start_all()
    stats, front = free_port(LB_HOST), free_port(LB_HOST)
    servers = "\n".join(f"    server s{i + 1} {BACKEND_HOST}:{p} check" for i, p in enumerate(backends.ports))
    (tmp_path / "haproxy.cfg").write_text(HAPROXY_CFG.format(host=LB_HOST, stats=stats, front=front, servers=servers))
    lb = start([haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "haproxy.log")
    balancer = f'{{type: haproxy, url: "http://{LB_HOST}:{stats}/stats;csv", backend: www, min_up: 2, {TIMING}}}'
    try:
        await asyncio.to_thread(wait_port, LB_HOST, stats)
        async with cluster(tmp_path, balancer, 73) as nodes:
            await all_answer(nodes, EAST, 15)
            await region_shows(nodes[0], lambda r: "haproxy www: 3/3 servers up (min_up 2)" in r["balancer"]["cause"])

            # Full: 3 servers at maxconn 2 take 6 sessions; 8 held leave 2 queued (133%).
            moved, back = await fill_and_release(
                nodes, backends, f"http://{LB_HOST}:{front}/slow", 8, r"haproxy www: 6 sessions \+ 2 queued of 6 \(133%\)")

            # The pool dies behind a live HAProxy: 1 of 3 servers up is below min_up 2.
            await backends.kill(0)
            await backends.kill(1)
            gone = await all_answer(nodes, WEST, 15)
            doc = (await asyncio.to_thread(status, nodes[1]))["regions"]["us-east"]
            assert doc["up"] is False
            assert "haproxy www: 1/3 servers up (min_up 2): s1 DOWN, s2 DOWN" in doc["cause"], doc
            explained = await asyncio.to_thread(query, nodes[0])
            assert "removed us-east" in explained and "haproxy www: 1/3 servers up (min_up 2)" in explained, explained

            await backends.start(0)
            again = await all_answer(nodes, EAST, 15)
            assert all(n.proc.poll() is None for n in nodes)
        print(f"haproxy: full -> us-west {moved:.1f}s, released -> us-east {back:.1f}s, "
              f"pool down -> us-west {gone:.1f}s, pool back -> us-east {again:.1f}s")
    finally:
        stop_process(lb)
        await backends.close()


# --- nginx --------------------------------------------------------------------------------

NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_read_timeout 40s;
    upstream www {{ server {backend}; }}
    server {{
        listen {host}:{port};
        location = /stub_status {{ stub_status; }}
        location / {{ proxy_pass http://www; }}
    }}
}}
"""


async def test_nginx_full_steers_around_the_region_and_a_dead_nginx_fails_it_over(tmp_path: Path) -> None:
    nginx = binary("nginx")
    backends = Backends(1)
    await backends.start_all()
    port = free_port(LB_HOST)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=prefix, host=LB_HOST, port=port, backend=f"{BACKEND_HOST}:{backends.ports[0]}"))
    lb = start([nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], tmp_path / "nginx.log")
    balancer = f"{{type: nginx, url: 'http://{LB_HOST}:{port}/stub_status', capacity: 10, {TIMING}}}"
    try:
        await asyncio.to_thread(wait_port, LB_HOST, port)
        async with cluster(tmp_path, balancer, 76) as nodes:
            await all_answer(nodes, EAST, 15)

            # 9 connections held open (and the readers' own) on a capacity of 10: above 80%.
            moved, back = await fill_and_release(
                nodes, backends, f"http://{LB_HOST}:{port}/slow", 9, r"nginx: (9|10|11) active connections of 10 ")

            await asyncio.to_thread(stop_process, lb)
            gone = await all_answer(nodes, WEST, 15)
            cause = (await asyncio.to_thread(status, nodes[1]))["regions"]["us-east"]["cause"]
            assert "balancer check down" in cause and "ClientConnectorError" in cause, cause
        print(f"nginx: full -> us-west {moved:.1f}s, released -> us-east {back:.1f}s, nginx stopped -> us-west {gone:.1f}s")
    finally:
        stop_process(lb)
        await backends.close()
