"""The capacity poller reads a region's HAProxy/nginx/Envoy status page when it has no capacity_url."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from netutil import free_port

from geodns.config import load_zone_text
from geodns.control.capacity import CapacityPoller, capacity_sources

DATA = Path(__file__).parents[1] / "health" / "data"


@pytest.fixture
async def pages():
    """A real HTTP server with the recorded status pages, a junk page and a 500."""
    routes = {
        "/stats;csv": (200, (DATA / "haproxy-2.6-stats.csv").read_text()),
        "/stub_status": (200, (DATA / "nginx-1.22-stub_status.txt").read_text()),
        "/clusters": (200, (DATA / "envoy-clusters-handler-test.json").read_text()),
        "/junk": (200, "# pxname,svname,scur\n" + "\x00" * 300 + ",,," * 100000),
        "/v1/load": (200, '{"utilisation": 0.25}'),
        "/broken": (500, "oops"),
    }

    async def handle(request: web.Request) -> web.Response:
        status, body = routes.get(request.raw_path.split("?")[0], (404, "no"))
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    host, port = "127.0.0.2", free_port("127.0.0.2")
    await web.TCPSite(runner, host, port).start()
    yield f"http://{host}:{port}"
    await runner.cleanup()


def zone(base: str) -> str:
    def region(name: str, i: int, extra: str) -> str:
        return f"  {name}:\n    coordinates: [1, {i}]\n    endpoints: [192.0.2.{i}]\n    {extra}\n"

    return (
        "zone: t.test\nsoa: {mname: ns1, rname: h, serial: 1}\nnameservers: [ns1]\nregions:\n"
        + region("hx", 1, f'balancer: {{type: haproxy, url: "{base}/stats;csv", backend: www}}')
        + region("ng", 2, f"balancer: {{type: nginx, url: {base}/stub_status, capacity: 100}}")
        + region("ev", 3, f'balancer: {{type: envoy, url: "{base}/clusters?format=json", cluster: fake_cluster}}')
        + region("junk", 4, f'balancer: {{type: haproxy, url: "{base}/junk", backend: www}}')
        + region("err", 5, f"balancer: {{type: nginx, url: {base}/broken, capacity: 10}}")
        + region("own", 6, f"capacity_url: {base}/v1/load\n    balancer: {{type: nginx, url: {base}/stub_status, capacity: 1}}")
        + region("plain", 7, "balancer: {type: http, port: 8080, path: /v1/load}")
        + "records:\n  www: {steer: [healthy, capacity]}\n"
    )


async def test_status_pages_feed_the_capacity_step_and_bad_ones_only_drop_their_region(pages):
    z = load_zone_text(zone(pages), "z.yaml")
    sources = capacity_sources([z])
    assert set(sources) == {"hx", "ng", "ev", "junk", "err", "own"}  # `plain` has no load report
    assert sources["own"] == f"{pages}/v1/load"  # an explicit capacity_url wins
    published = []
    poller = CapacityPoller(lambda: sources, published.append)
    async with aiohttp.ClientSession() as session:
        loads = await poller.poll_once(session)
    assert published == [loads]
    assert loads == pytest.approx({"hx": 2.5, "ng": 0.04, "ev": 0.0, "own": 0.25})
    assert poller.notes["hx"] == "haproxy www: 2 sessions + 3 queued of 2 (250%)"
    assert poller.notes["ng"] == "nginx: 4 active connections of 100 (4%)"
    assert poller.notes["own"] == "/v1/load: utilisation 25%"
    assert poller.notes["junk"].startswith("unavailable: haproxy: ")
    assert poller.notes["err"] == f"unavailable: nginx: HTTP 500 from {pages}/broken"
