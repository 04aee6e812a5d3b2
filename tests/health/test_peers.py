"""Signed peer exchange through real HTTP: each node signs for itself, replays
and forgeries are refused, replies are bound to their request, drains are
checked where they enter, and /v1/health needs credentials."""

from __future__ import annotations

import logging
import time
import zlib

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from geodns.config.model import Check
from geodns.health import HealthService, NodeSettings
from geodns.health.peers import (
    ADMIN_TOKEN,
    CONTENT_TYPE,
    HEALTH_PATH,
    MAX_BODY,
    NONCE_HEADER,
    OBSERVATIONS_PATH,
    Verifier,
    decode,
    encode,
)
from geodns.health.risefall import State

from .conftest import free_port, keypairs, make_zone, peer, region

KEYS = keypairs("n1", "n2", "n3")
STRANGER = keypairs("n2")["n2"]  # a key nobody lists
TOKEN = "health-reader-token"
CHECK = Check(kind="tcp", port=9, interval=3600)  # never probed during a test


@pytest.fixture
async def node():
    """n1 serving its peer routes on 127.0.0.51; n2 and n3 are its peers; only
    n2 observes eu/10.0.0.2 (check.observers is 1 there: chosen below)."""
    settings = NodeSettings(name="n1", private_key=KEYS["n1"], peers=(
        peer("n2", "http://127.0.0.52:1", KEYS["n2"]), peer("n3", "http://127.0.0.53:1", KEYS["n3"])))
    zone = make_zone([region("eu", "10.0.0.1", check=CHECK)])
    registry = CollectorRegistry()
    svc = HealthService(settings, [zone], registry=registry)
    app = web.Application()
    app[ADMIN_TOKEN] = TOKEN
    svc.add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.51")
    await web.TCPSite(runner, "127.0.0.51", port).start()
    async with aiohttp.ClientSession() as http:
        yield svc, registry, http, f"http://127.0.0.51:{port}"
    await runner.cleanup()


def as_node(name: str, key=None) -> Verifier:
    """What node `name` holds: its own key and n1's public key."""
    return Verifier(name, key or KEYS[name], {"n1": KEYS["n1"].public_key()})


def message(node: str = "n2", state: str = "down", drains=(), target: str = "eu/10.0.0.1", **extra) -> dict:
    return {"v": 2, "node": node, "sent_at": time.time(), "details": ["HTTP 503"], "drains": list(drains),
            "views": [[state, -5000, 5000, -100, 0, [target]]], **extra}


async def post(http, base, body: bytes, headers: dict) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with http.post(base + OBSERVATIONS_PATH, data=body,
                         headers={**headers, "Content-Type": CONTENT_TYPE}) as r:
        return r.status, await r.read(), r.headers


def rejected(registry, reason, peer="n2"):
    return registry.get_sample_value("geodns_peer_messages_rejected_total", {"reason": reason, "peer": peer}) or 0


def views(svc):
    return [(v.observer, v.state) for v in svc._views_of("eu/10.0.0.1", time.time()) if v.observer != "n1"]


async def test_signed_message_is_accepted_and_the_reply_is_bound_to_it(node):
    svc, registry, http, base = node
    n2 = as_node("n2")
    body = encode(message())
    headers = n2.sign("push", "n1", body)
    status, reply, reply_headers = await post(http, base, body, headers)
    assert status == 200
    # The reply is n1's, for this request: its nonce verifies, another does not.
    assert n2.verify("reply", reply_headers, reply, time.time(), sender="n1", nonce=headers[NONCE_HEADER]) == "n1"
    with pytest.raises(Exception, match="wrong_nonce"):
        n2.verify("reply", reply_headers, reply, time.time(), sender="n1", nonce="ab" * 16)
    assert decode(reply)["node"] == "n1"
    assert views(svc) == [("n2", State.DOWN)]
    assert svc.status()["targets"]["eu/10.0.0.1"]["observers"]["n2"]["detail"] == "HTTP 503"


@pytest.mark.parametrize(
    ("sign", "reason", "status", "peer_label"),
    [
        (lambda b: {}, "unsigned", 401, "unknown"),
        # a key n1 does not list for n2: someone else claiming to be n2
        (lambda b: as_node("n2", STRANGER).sign("push", "n1", b), "bad_signature", 401, "n2"),
        (lambda b: as_node("n2").sign("push", "n1", b, now=time.time() - 120), "stale", 401, "n2"),
        (lambda b: {**as_node("n2").sign("push", "n1", b), "X-Geodns-Timestamp": "nan"}, "bad_timestamp", 401, "n2"),
        # signed for another recipient: not replayable to n1
        (lambda b: as_node("n2").sign("push", "n3", b), "bad_signature", 401, "n2"),
        (lambda b: as_node("n2").sign("reply", "n1", b), "bad_signature", 401, "n2"),
        (lambda b: Verifier("n9", STRANGER, {}).sign("push", "n1", b), "unknown_peer", 403, "unknown"),
    ],
)
async def test_bad_messages_are_refused_and_counted(node, sign, reason, status, peer_label):
    svc, registry, http, base = node
    body = encode(message())
    code, reply, _ = await post(http, base, body, sign(body))
    assert code == status and reason.encode() in reply
    assert rejected(registry, reason, peer_label) == 1
    assert views(svc) == []


async def test_replay_is_refused(node):
    svc, registry, http, base = node
    body = encode(message())
    headers = as_node("n2").sign("push", "n1", body)
    assert (await post(http, base, body, headers))[0] == 200
    code, reply, _ = await post(http, base, body, headers)
    assert code == 401 and b"replay" in reply
    assert rejected(registry, "replay") == 1


async def test_a_node_cannot_speak_for_another(node):
    """n3 holds valid credentials, but views are n3's only when n3 signs them:
    a message naming n2 in its body, or signed as n2 with n3's key, is refused."""
    svc, registry, http, base = node
    body = encode(message(node="n2"))
    code, reply, _ = await post(http, base, body, as_node("n3").sign("push", "n1", body))
    assert code == 400 and b"malformed" in reply  # body says n2, signer is n3
    code, _, _ = await post(http, base, body, {**as_node("n2", KEYS["n3"]).sign("push", "n1", body)})
    assert code == 401
    assert rejected(registry, "malformed", "n3") == 1 and rejected(registry, "bad_signature", "n2") == 1
    assert views(svc) == []


async def test_tampered_garbage_and_oversized_bodies(node):
    svc, registry, http, base = node
    n2 = as_node("n2")
    body = encode(message())
    headers = n2.sign("push", "n1", body)
    tampered = encode(message(state="up"))
    assert (await post(http, base, tampered, headers))[0] == 401
    for junk in (b"not zlib at all", zlib.compress(b'{"v": 2, "node": "n2"}'),
                 zlib.compress(b'{"v": 2, "node": "n2", "sent_at": NaN, "views": []}'),
                 encode(message(views=[["down", 1e300, 5000, 0, 0, ["eu/10.0.0.1"]]])),
                 encode(message(views=[["down", 10**400, 5000, 0, 0, ["eu/10.0.0.1"]]])),
                 encode(message(views=[["sideways", -5000, 5000, -100, 0, ["eu/10.0.0.1"]]])),
                 encode(message(views=[["down", -5000, 5000, -100, 7, ["eu/10.0.0.1"]]]))):
        code, reply, _ = await post(http, base, junk, n2.sign("push", "n1", junk))
        assert code == 400 and b"malformed" in reply, (junk, reply)
    bomb = zlib.compress(b" " * (80 * 1024 * 1024), 9)
    code, reply, _ = await post(http, base, bomb, n2.sign("push", "n1", bomb))
    assert code == 413
    huge = b"\0" * (MAX_BODY + 1)
    code, reply, _ = await post(http, base, huge, n2.sign("push", "n1", huge))
    assert code == 413
    assert rejected(registry, "malformed") == 7 and rejected(registry, "too_large") == 2
    assert views(svc) == []


async def test_views_only_for_targets_the_sender_observes(node):
    """With observers: 1, each endpoint is probed by one node; another node's
    view of it is dropped (and counted), the rest of its message taken."""
    svc, registry, http, base = node
    from geodns.health.plan import choose_observers

    one = Check(kind="tcp", port=9, interval=3600, observers=1)
    addresses = [f"10.0.1.{i}" for i in range(1, 40)]
    zone = make_zone([region("eu", "10.0.0.1", *addresses, check=one)])
    svc.reconfigure([zone])
    members = ("n1", "n2", "n3")
    mine = next(a for a in addresses if choose_observers(members, f"tcp|{a}|None|9|/|None|", 1) == {"n2"})
    theirs = next(a for a in addresses if choose_observers(members, f"tcp|{a}|None|9|/|None|", 1) == {"n3"})
    msg = message()
    msg["views"] = [["down", -5000, 5000, -100, 0, [f"eu/{a}" for a in (mine, theirs)]]]
    body = encode(msg)
    assert (await post(http, base, body, as_node("n2").sign("push", "n1", body)))[0] == 200
    now = time.time()
    assert [v.observer for v in svc._views_of(f"eu/{mine}", now)] == ["n2"]
    assert [v.observer for v in svc._views_of(f"eu/{theirs}", now)] == []
    assert rejected(registry, "not_observer") == 1


async def test_poisoned_drains_are_refused_and_decisions_go_on(node, caplog):
    svc, registry, http, base = node
    n2 = as_node("n2")
    from geodns.health.drains import sign_drain
    from geodns.health.quorum import Drain

    def signed(**kw):
        d = sign_drain(Drain(**{"target": "eu", "active": True, "reason": "x", "at": time.time(), "by": "n2", **kw}),
                       KEYS["n2"])
        return {"target": d.target, "active": d.active, "reason": d.reason, "at": d.at, "by": d.by,
                "signature": d.signature}

    poisoned = [
        {**signed(), "at": 1e300},  # the signature no longer matches, and the time is absurd
        signed(at=time.time() + 3600),  # an hour ahead of our clock
        signed(reason="r" * 5000),
        signed(by="n" * 500),
        {**signed(), "by": "n3"},  # n2 cannot make a drain in n3's name
        {**signed(), "at": -1},
    ]
    body = encode(message(drains=poisoned))
    with caplog.at_level(logging.WARNING, "geodns.health"):
        assert (await post(http, base, body, n2.sign("push", "n1", body)))[0] == 200
    assert svc.drains() == {}
    assert rejected(registry, "bad_drain") == len(poisoned)
    # logged once for the minute, with the name it claimed
    refusals = [r.getMessage() for r in caplog.records if "peer message refused" in r.getMessage()]
    assert len(refusals) == 1 and "claimed=n2" in refusals[0]
    svc._recompute()  # no recompute raises: the verdict is n2's view, not a drain
    v = svc.verdicts()["eu/10.0.0.1"]
    assert not v.up and not v.forced and "n2 down" in v.cause
    # a good drain, signed by n2 and relayed by n3, is taken
    good = signed(reason="fibre cut")
    body = encode(message(node="n3", drains=[good], views=[]))
    assert (await post(http, base, body, as_node("n3").sign("push", "n1", body)))[0] == 200
    assert svc.drains()["eu"].reason == "fibre cut" and not svc.verdicts()["eu"].up


async def test_health_route_needs_a_signature_or_the_token(node):
    svc, registry, http, base = node
    async with http.get(base + HEALTH_PATH) as r:
        assert r.status == 401
    async with http.get(base + HEALTH_PATH, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    async with http.get(base + HEALTH_PATH, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        doc = await r.json()
    assert doc["node"] == "n1" and "eu" in doc["regions"]
    async with http.get(base + HEALTH_PATH, headers=as_node("n3").sign("health", "n1", b"")) as r:
        assert r.status == 200
    async with http.get(base + HEALTH_PATH, headers=as_node("n3", STRANGER).sign("health", "n1", b"")) as r:
        assert r.status == 401


async def test_one_peer_cannot_fill_the_replay_memory_for_the_others(node, monkeypatch):
    """Every accepted nonce is remembered for twice the window, and the memory is
    bounded. It was one pool: a peer sending fast enough (garbage bodies will do:
    the nonce is kept once the signature checks) filled it and every peer's push
    was then refused. Each peer now has its share; the others keep being heard."""
    from geodns.health import peers as peers_module

    svc, registry, http, base = node
    monkeypatch.setattr(peers_module, "MAX_REPLAY_MEMORY", 20)
    share = 20 // len(svc.verifier.peer_keys)
    n2, n3 = as_node("n2"), as_node("n3")
    codes = []
    for _ in range(share + 4):
        junk = b"not zlib"
        codes.append((await post(http, base, junk, n2.sign("push", "n1", junk)))[0])
    assert codes[:share] == [400] * share and codes[share:] == [401] * 4, codes
    body = encode(message(node="n3"))
    code, reply, _ = await post(http, base, body, n3.sign("push", "n1", body))
    assert code == 200, reply
    assert rejected(registry, "replay", "n2") == 4
