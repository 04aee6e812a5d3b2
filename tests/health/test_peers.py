"""Signed peer exchange through real HTTP: accept, reject, replay."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from geodns.health import HealthService, NodeSettings, Peer
from geodns.health.peers import OBSERVATIONS_PATH, Verifier, signed_headers
from geodns.health.risefall import State

from .conftest import free_port, make_zone, region

SECRET = b"correct horse battery staple"


@pytest.fixture
async def node():
    """n1 serving its peer routes on 127.0.0.51; n2 is a configured peer."""
    settings = NodeSettings(name="n1", peers=(Peer("n2", "http://127.0.0.52:1"),), secret=SECRET)
    zone = make_zone([region("eu", "10.0.0.1")])
    registry = CollectorRegistry()
    svc = HealthService(settings, [zone], registry=registry)
    app = web.Application()
    svc.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.51")
    await web.TCPSite(runner, "127.0.0.51", port).start()
    async with aiohttp.ClientSession() as http:
        yield svc, registry, http, f"http://127.0.0.51:{port}"
    await runner.cleanup()


def message(node: str = "n2", state: str = "down") -> bytes:
    now = time.time()
    return json.dumps({"v": 1, "node": node, "sent_at": now, "drains": [], "views": [
        {"target": "eu/10.0.0.1", "state": state, "since": now - 5, "at": now - 0.1,
         "until": now + 5, "seq": 9, "detail": "HTTP 503"}]}).encode()


def rejected(registry, reason):
    return registry.get_sample_value("geodns_peer_messages_rejected_total", {"reason": reason}) or 0


async def test_signed_message_is_accepted_and_answered_signed(node):
    svc, registry, http, base = node
    body = message()
    async with http.post(base + OBSERVATIONS_PATH, data=body, headers=signed_headers(SECRET, body)) as r:
        assert r.status == 200
        reply = await r.read()
        Verifier(SECRET).verify(r.headers, reply, time.time())
    assert json.loads(reply)["node"] == "n1"
    views = svc._views_of("eu/10.0.0.1", time.time())
    assert [(v.observer, v.state) for v in views] == [("n2", State.DOWN)]
    assert svc.status()["targets"]["eu/10.0.0.1"]["observers"]["n2"]["detail"] == "HTTP 503"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (lambda b: {}, "unsigned"),
        (lambda b: signed_headers(b"the wrong secret entirely", b), "bad_signature"),
        (lambda b: signed_headers(SECRET, b, now=time.time() - 120), "stale"),
        (lambda b: {**signed_headers(SECRET, b), "X-Geodns-Timestamp": "soon"}, "bad_timestamp"),
    ],
)
async def test_bad_messages_are_rejected_and_counted(node, headers, reason):
    svc, registry, http, base = node
    body = message()
    async with http.post(base + OBSERVATIONS_PATH, data=body, headers=headers(body)) as r:
        assert r.status == 401
        assert (await r.json())["error"] == reason
    assert rejected(registry, reason) == 1
    assert svc._views_of("eu/10.0.0.1", time.time()) == []


async def test_replay_is_rejected(node):
    svc, registry, http, base = node
    body = message()
    headers = signed_headers(SECRET, body)
    async with http.post(base + OBSERVATIONS_PATH, data=body, headers=headers) as r:
        assert r.status == 200
    async with http.post(base + OBSERVATIONS_PATH, data=body, headers=headers) as r:
        assert r.status == 401 and (await r.json())["error"] == "replay"
    assert rejected(registry, "replay") == 1


async def test_tampered_body_and_unknown_node_and_garbage(node):
    svc, registry, http, base = node
    body = message()
    headers = signed_headers(SECRET, body)
    async with http.post(base + OBSERVATIONS_PATH, data=body.replace(b"down", b"up  "), headers=headers) as r:
        assert r.status == 401
    stranger = message(node="n9")
    async with http.post(base + OBSERVATIONS_PATH, data=stranger, headers=signed_headers(SECRET, stranger)) as r:
        assert r.status == 403
    junk = b'{"node": "n2"}'
    async with http.post(base + OBSERVATIONS_PATH, data=junk, headers=signed_headers(SECRET, junk)) as r:
        assert r.status == 400
    assert rejected(registry, "bad_signature") == 1
    assert rejected(registry, "unknown_peer") == 1
    assert rejected(registry, "malformed") == 1


async def test_health_status_route(node):
    svc, registry, http, base = node
    async with http.get(base + "/v1/health") as r:
        doc = await r.json()
    assert doc["node"] == "n1" and "eu" in doc["regions"]
