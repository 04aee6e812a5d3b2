"""The capacity poller against real HTTP servers: one region's bad /v1/load costs only that region."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest
from aiohttp import web

from geodns.control.capacity import BadReport, CapacityPoller, utilisation_of

HOST = "127.0.5.41"
GOOD = {"utilisation": 0.3, "saturation": 0.8, "saturated": False, "in_flight": 3}
SATURATED = {"utilisation": 0.9, "saturation": 0.8, "saturated": True}

# Region -> the raw /v1/load body its balancer serves.
BAD_BODIES: dict[str, bytes] = {
    "string": json.dumps({"utilisation": 0.5, "saturation": "high", "saturated": True}).encode(),
    "nan": b'{"utilisation": 0.5, "saturation": NaN, "saturated": true}',
    "infinity": b'{"utilisation": 0.5, "saturation": Infinity, "saturated": true}',
    "negative": json.dumps({"utilisation": 0.5, "saturation": -0.5, "saturated": True}).encode(),
    "huge": b'{"utilisation": 0.5, "saturation": 1e400, "saturated": true}',
    "huge-int": b'{"utilisation": 0.5, "saturation": 1' + b"0" * 400 + b', "saturated": true}',
    "above-one": json.dumps({"utilisation": 0.5, "saturation": 7, "saturated": True}).encode(),
    "missing": json.dumps({"utilisation": 0.5, "saturated": True}).encode(),
    "object": json.dumps({"utilisation": 0.5, "saturation": {"x": 1}, "saturated": True}).encode(),
    "saturated-string": json.dumps({"utilisation": 0.5, "saturation": 0.8, "saturated": "yes"}).encode(),
    "utilisation-nan": b'{"utilisation": NaN, "saturation": 0.8}',
    "not-an-object": b"[0.5, 0.8]",
    "not-json": b"<html>busy</html>",
    "not-utf8": b'{"utilisation": 0.5, "saturation": "\xff\xfe"}',
    "too-large": b'{"utilisation": 0.5, "saturation": 0.8, "pad": "' + b"x" * 70_000 + b'"}',
}


@pytest.fixture
async def balancers():
    """One real HTTP server standing in for every region's balancer: /REGION/v1/load."""
    bodies = {"good": json.dumps(GOOD).encode(), "saturated": json.dumps(SATURATED).encode(), **BAD_BODIES}

    async def load(request: web.Request) -> web.Response:
        region = request.match_info["region"]
        status = 503 if region == "saturated" else 200  # geodns balance's answer when no backend is up
        return web.Response(body=bodies[region], status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{region}/v1/load", load)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    yield {region: f"http://{HOST}:{port}/{region}/v1/load" for region in bodies}
    await runner.cleanup()


async def test_a_bad_report_is_ignored_and_the_others_apply(balancers, caplog) -> None:
    published: list[dict[str, float]] = []
    poller = CapacityPoller(lambda: balancers, lambda loads: published.append(dict(loads)))
    caplog.set_level(logging.WARNING, logger="geodns.capacity")
    async with aiohttp.ClientSession() as session:
        loads = await poller.poll_once(session)
        assert published == [{"good": 0.3, "saturated": 0.9}]
        assert loads == published[0]
        refused = {r.getMessage().split("region=")[1].split()[0]: r.getMessage() for r in caplog.records}
        assert set(refused) == set(BAD_BODIES)
        assert "saturation 'high' is not a number" in refused["string"]
        assert "saturation -0.5 is not in (0, 1]" in refused["negative"]
        assert "saturation is missing" in refused["missing"]
        assert "not finite" in refused["huge"] and "out of range" in refused["huge-int"]
        assert "NaN is not JSON" in refused["nan"] and "larger than 65536" in refused["too-large"]
        # Logged once per failing region, not every round.
        caplog.clear()
        assert await poller.poll_once(session) == published[0]
        assert caplog.records == []


def test_utilisation_of_reads_geodns_balance_reports() -> None:
    assert utilisation_of(GOOD) == 0.3
    assert utilisation_of(SATURATED) == 0.9
    assert utilisation_of({"utilisation": 0.5, "saturation": 0.8, "saturated": True}) == 0.8
    assert utilisation_of({"utilisation": 1e9, "saturation": 1}) == 10.0
    assert utilisation_of({"utilisation": 0.25}) == 0.25  # no saturation claimed, none needed
    for bad in (None, [], {"saturation": 0.8}, {"utilisation": True, "saturation": 0.8}, {"utilisation": 0.1, "saturation": 0},
                {"utilisation": 0.1, "saturated": True}, {"utilisation": 0.1, "saturation": None}):
        with pytest.raises(BadReport):
            utilisation_of(bad)
