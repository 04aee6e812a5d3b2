"""The balancer against real aiohttp backends on 127.0.4.x, over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from geodns.balance import sticky

from .conftest import NET, admin_url, session_from, until, url

N = 1000
"""Requests per distribution test."""


async def fetch_many(session: aiohttp.ClientSession, target: str, n: int, concurrency: int = 8,
                     headers=None) -> Counter[str]:
    """GET `target` n times, `concurrency` at a time; count the answering backends."""
    counts: Counter[str] = Counter()
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem, session.get(target, headers=headers(i) if headers else None) as r:
            await r.read()
            assert r.status == 200, (r.status, await r.text())
            counts[r.headers["X-Backend"]] += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return counts


def pool(backs, algorithm="round_robin", weights=None, **extra):
    return {
        "algorithm": algorithm,
        "backends": [
            {"address": b.address, "weight": (weights or [1] * len(backs))[i]} for i, b in enumerate(backs)
        ],
        **extra,
    }


async def backend_posts(client: aiohttp.ClientSession, backend, at_least: int | None = None) -> int | bool:
    """The POSTs `backend` has received, or (with `at_least`) whether it has received that many."""
    async with client.get(backend.url + "/control/stats") as r:
        posts = (await r.json())["posts"]
    return posts if at_least is None else posts >= at_least


async def load_is(client: aiohttp.ClientSession, b, status: int, healthy: int) -> bool:
    """`/v1/load` answers `status` with `healthy` healthy backends."""
    async with client.get(admin_url(b, "/v1/load")) as r:
        return r.status == status and (await r.json())["healthy_backends"] == healthy


def within(counts: Counter[str], expected: dict[str, float], tolerance: float) -> bool:
    """Every backend's share is within `tolerance` (absolute, of all requests) of expected."""
    total = sum(counts.values())
    return all(abs(counts[k] / total - share) <= tolerance for k, share in expected.items())


# ------------------------------------------------------------------ distribution


@pytest.mark.parametrize(
    ("algorithm", "weights", "tolerance", "concurrency"),
    [
        ("round_robin", [1, 1, 1], 0.002, 8),  # exact: 333/333/334
        ("weighted_round_robin", [5, 3, 2], 0.002, 8),  # exact: 500/300/200
        # One at a time every backend is idle, so ties decide and follow the weights:
        # exact. (Under concurrency, in-flight/weight decides; see test_choosers.)
        ("least_conn", [5, 3, 2], 0.002, 1),
    ],
)
async def test_distribution_over_1000_requests(backends, balancer, client, algorithm, weights, tolerance, concurrency):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, algorithm, weights)}})
    counts = await fetch_many(client, url(b), N, concurrency)
    total = sum(weights)
    expected = {f"b{i}": w / total for i, w in enumerate(weights)}
    assert sum(counts.values()) == N
    assert within(counts, expected, tolerance), counts


async def test_ip_hash_distribution_and_affinity(backends, balancer):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, "ip_hash")}})
    per_client: dict[str, Counter[str]] = {}
    sources = [f"{NET}.{100 + i}" for i in range(50)]  # 50 clients x 20 requests = 1,000

    async def client_run(source: str) -> None:
        async with session_from(source) as s:
            per_client[source] = await fetch_many(s, url(b), 20, concurrency=4)

    await asyncio.gather(*(client_run(s) for s in sources))
    assert all(len(c) == 1 for c in per_client.values()), "a client moved between backends"
    counts = sum(per_client.values(), Counter())
    # 50 clients over 3 equal backends: each backend's share within 1/3 +- 0.2.
    assert within(counts, {"b0": 1 / 3, "b1": 1 / 3, "b2": 1 / 3}, 0.2), counts


async def test_consistent_hash_on_header(backends, balancer, client):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, "consistent_hash", hash_key={"source": "header", "name": "X-User"})}})
    seen: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    for _round in range(5):  # 200 users x 5 = 1,000 requests, sequential so load stays under the bound
        for user in range(200):
            async with client.get(url(b), headers={"X-User": f"u{user}"}) as r:
                assert r.status == 200
                seen.setdefault(f"u{user}", set()).add(r.headers["X-Backend"])
                counts[r.headers["X-Backend"]] += 1
    assert all(len(v) == 1 for v in seen.values()), "a key moved between backends"
    # 200 keys on a 100-vnode ring: each backend within 1/3 +- 0.2.
    assert within(counts, {"b0": 1 / 3, "b1": 1 / 3, "b2": 1 / 3}, 0.2), counts


# ------------------------------------------------------------------ proxying


async def test_headers_streaming_routes_and_websocket(backends, balancer, client):
    backs = await backends(2)
    b = await balancer({
        "pools": {"web": pool(backs[:1]), "api": pool(backs[1:])},
        "routes": [{"path": "/", "pool": "web"}, {"path": "/headers", "pool": "api"}],
    })
    async with client.get(url(b, "/headers"), headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}) as r:
        seen = await r.json()
        assert r.headers["X-Backend"] == "b1" and r.headers["Via"] == "1.1 geodns"
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http" and seen["Via"] == "1.1 geodns"  # client's "https" replaced
    async with client.get(url(b, "/stream?chunks=5&gap=0.05")) as r:
        assert r.headers["X-Backend"] == "b0"
        assert "Content-Length" not in r.headers  # streamed, not buffered
        assert await r.text() == "".join(f"chunk {i}\n" for i in range(5))
    big = b"z" * (3 * 1024 * 1024)
    async with client.post(url(b, "/post"), data=big) as r:
        assert (await r.json())["size"] == len(big)
    async with client.ws_connect(url(b, "/ws"), protocols=["echo"]) as ws:
        assert ws.protocol == "echo"
        await ws.send_str("ping")
        assert (await ws.receive()).data == "b0:ping"
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive()).data == b"\x00\x01"


async def test_no_route_and_read_timeout(backends, balancer, client):
    backs = await backends(1)
    b = await balancer({
        "pools": {"web": pool(backs)},
        "routes": [{"host": "only.example", "pool": "web"}],
        "timeouts": {"read": 0.3},
        "retries": 0,
    })
    async with client.get(url(b)) as r:
        assert r.status == 404
    async with client.get(url(b, "/slow?s=2"), headers={"Host": "only.example"}) as r:
        assert r.status == 504


# ------------------------------------------------------------------ stickiness


async def test_sticky_holds_then_moves_when_backend_dies(backends, balancer, client):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, sticky={"cookie": "s"}, passive={"failures": 1, "cool_off": 30})}})
    async with client.get(url(b)) as r:
        home = r.headers["X-Backend"]
        cookie = r.cookies["s"].value
    for _ in range(30):
        async with client.get(url(b), headers={"Cookie": f"s={cookie}"}) as r:
            assert r.headers["X-Backend"] == home
            assert "s" not in r.cookies  # pinned: no new cookie
    next(x for x in backs if x.name == home).kill()
    async with client.get(url(b), headers={"Cookie": f"s={cookie}"}) as r:
        assert r.status == 200
        moved = r.headers["X-Backend"]
        assert moved != home
        new_cookie = r.cookies["s"].value
    for _ in range(10):
        async with client.get(url(b), headers={"Cookie": f"s={new_cookie}"}) as r:
            assert r.headers["X-Backend"] == moved


async def test_forged_sticky_cookie_is_ignored(backends, balancer, client):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, sticky={"cookie": "s"})}, "sticky_secret": "real"})
    target = backs[2].address
    forged = sticky.sign(b"guessed", "web", target)
    unsigned = forged.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
    counts: Counter[str] = Counter()
    for i in range(30):
        value = forged if i % 2 else unsigned
        async with client.get(url(b), headers={"Cookie": f"s={value}"}) as r:
            counts[r.headers["X-Backend"]] += 1
            # A fresh, genuine cookie replaces the forged one.
            assert sticky.verify(b"real", "web", r.cookies["s"].value) is not None
    assert counts == {"b0": 10, "b1": 10, "b2": 10}, counts  # round robin, not pinned to b2


# ------------------------------------------------------------------ health and retries


async def test_backend_killed_mid_traffic_costs_no_failed_get(backends, balancer):
    backs = await backends(3)
    b = await balancer({"pools": {"web": pool(backs, passive={"failures": 2, "cool_off": 30})}})
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def worker(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with s.get(url(b, "/slow?s=0.02")) as r:
                await r.read()
                statuses[r.status] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        tasks = [asyncio.create_task(worker(s)) for _ in range(16)]
        await until(lambda: statuses.total() >= 150, 20, "150 responses before the kill")
        backs[1].kill()
        killed = b.backends[("web", backs[1].address)]
        await until(lambda: killed.state(time.monotonic()) == "tripped" and statuses.total() >= 350, 20,
                    "the killed backend tripped and 200 more responses")
        stop.set()
        await asyncio.gather(*tasks)
    assert statuses[200] > 300 and set(statuses) == {200}, statuses
    assert b.metrics.retries.labels("*/")._value.get() >= 1
    assert b.backends[("web", backs[1].address)].state(time.monotonic()) == "tripped"


async def test_post_is_never_sent_twice(backends, balancer, client):
    backs = await backends(2)
    dead = f"{NET}.19:1"  # nothing listens: connection refused, the POST never left
    b = await balancer({"pools": {"web": {"backends": [dead, backs[0].address]}}})
    # Refused connects are retried even for POST: the request never reached a backend.
    for _ in range(4):
        async with client.post(url(b, "/post"), data=b"abc") as r:
            assert r.status == 200 and r.headers["X-Backend"] == "b0"
    # A POST that reached its backend, which then died, is not sent again.
    b2 = await balancer({"pools": {"web": pool(backs)}})
    posts = await backend_posts(client, backs[0])
    task = asyncio.create_task(client.post(url(b2, "/post?s=1"), data=b"once"))
    await until(lambda: backend_posts(client, backs[0], posts + 1), what="the POST at b0")
    backs[0].kill()  # round robin sent the first request to b0
    r = await task
    assert r.status == 502
    async with client.get(backs[1].url + "/control/stats") as s:
        assert (await s.json())["posts"] == 0


async def test_passive_breaker_takes_failing_backend_out(backends, balancer, client):
    backs = await backends(2)
    b = await balancer({"pools": {"web": pool(backs, passive={"failures": 3, "cool_off": 30})}})
    async with client.post(backs[0].url + "/control/fail/on"):
        pass
    counts = Counter()
    for _ in range(40):
        async with client.get(url(b)) as r:
            counts[(r.headers["X-Backend"], r.status)] += 1
    assert counts[("b0", 500)] == 3  # three 5xx, then the breaker opened
    assert counts[("b1", 200)] == 37
    assert b.metrics.trips.labels("web", backs[0].address)._value.get() == 1


async def test_active_checks_and_load_report(backends, balancer, client):
    backs = await backends(2)
    check = {"type": "http", "path": "/health", "interval": 0.1, "timeout": 0.1, "fall": 1, "rise": 1, "jitter": 0}
    b = await balancer({"region": "test", "pools": {"web": pool(backs, check=check, max_conns=10)}})
    async with client.get(admin_url(b, "/v1/load")) as r:
        load = await r.json()
        assert r.status == 200
    assert load["region"] == "test" and load["healthy_backends"] == 2 and load["capacity"] == 20
    async with client.post(backs[0].url + "/control/health/down"):
        pass
    await until(lambda: load_is(client, b, 200, 1), what="b0 down by active checks")
    counts = await fetch_many(client, url(b), 20)
    assert counts == {"b1": 20}
    async with client.post(backs[1].url + "/control/health/down"):
        pass
    await until(lambda: load_is(client, b, 503, 0), what="both backends down")
    async with client.get(admin_url(b, "/v1/load")) as r:
        assert r.status == 503
        assert (await r.json())["healthy_backends"] == 0
    async with client.get(url(b)) as r:
        assert r.status == 503
    async with client.post(backs[0].url + "/control/health/up"):
        pass
    await until(lambda: load_is(client, b, 200, 1), what="b0 up again")
    async with client.get(admin_url(b, "/v1/load")) as r:
        assert r.status == 200 and (await r.json())["capacity"] == 10


async def test_saturation_reported(backends, balancer, client):
    backs = await backends(2)
    b = await balancer({"saturation": 0.5, "pools": {"web": pool(backs, max_conns=2)}})
    slow = [asyncio.create_task(client.get(url(b, "/slow?s=1"))) for _ in range(3)]
    await until(lambda: b.load().in_flight == 3, what="3 requests in flight")
    async with client.get(admin_url(b, "/v1/load")) as r:
        load = await r.json()
    assert (load["in_flight"], load["capacity"], load["utilisation"], load["saturated"]) == (3, 4, 0.75, True)
    for r in await asyncio.gather(*slow):
        assert r.status == 200
    async with client.get(admin_url(b, "/v1/load")) as r:
        load = await r.json()
    assert load["saturated"] is False and load["request_rate"] > 0
    async with client.get(admin_url(b, "/metrics")) as r:
        text = await r.text()
    sample = f'geodns_balance_requests_total{{backend="{backs[0].address}",route="*/",status="200"}}'
    assert sample in text
    assert "geodns_balance_request_duration_seconds_bucket" in text


# ------------------------------------------------------------------ draining


async def test_drain_finishes_in_flight_and_sends_none_new(backends, balancer, client):
    backs = await backends(2)
    b = await balancer({"pools": {"web": pool(backs)}})
    slow = [asyncio.create_task(client.get(url(b, "/slow?s=1"))) for _ in range(4)]  # 2 on each
    await until(lambda: b.load().in_flight == 4, what="4 requests in flight")
    drain = admin_url(b, f"/v1/backends/web/{backs[0].address}/drain")
    async with client.post(drain) as r:
        assert r.status == 401
    async with client.post(drain, headers={"Authorization": "Bearer wrong"}) as r:
        assert r.status == 401
    async with client.post(drain, headers={"Authorization": "Bearer s3cret"}) as r:
        assert r.status == 200
        assert (await r.json()) == {"pool": "web", "backend": backs[0].address, "state": "draining", "in_flight": 2}
    counts = await fetch_many(client, url(b), 20)
    assert counts == {"b1": 20}
    done = await asyncio.gather(*slow)
    assert sorted(r.headers["X-Backend"] for r in done) == ["b0", "b0", "b1", "b1"]
    assert all(r.status == 200 for r in done)
    async with client.get(admin_url(b, "/v1/backends")) as r:
        states = {row["backend"]: row["state"] for row in (await r.json())["backends"]}
    assert states[backs[0].address] == "drained"
    async with client.post(drain.replace("/drain", "/undrain"), headers={"Authorization": "Bearer s3cret"}) as r:
        assert r.status == 200
    counts = await fetch_many(client, url(b), 20)
    assert counts == {"b0": 10, "b1": 10}
