"""Pure pieces: circuit breaker, sticky cookie, rate window, routing, load report."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from geodns.balance import parse, sticky
from geodns.balance.edge import refusal
from geodns.balance.passive import CircuitBreaker
from geodns.balance.pool import build, load_report
from geodns.balance.rate import RateWindow


def test_breaker_trips_after_consecutive_failures_only() -> None:
    b = CircuitBreaker(failures=3, cool_off=10)
    assert not b.record(False, 0) and not b.record(False, 1)
    assert not b.record(True, 2)  # a success resets the streak
    assert not b.record(False, 3) and not b.record(False, 4)
    assert b.record(False, 5)
    assert b.is_open(5) and b.is_open(14.9) and not b.is_open(15.1)
    assert b.trips == 1


def test_breaker_half_open_reopens_on_one_failure() -> None:
    b = CircuitBreaker(failures=3, cool_off=10)
    for t in range(3):
        b.record(False, t)
    assert b.is_open(3)
    assert not b.record(False, 5)  # late result while open: ignored
    assert b.record(False, 13)  # first failure after cool-off: open again
    assert b.is_open(14)
    assert not b.record(True, 24) and not b.half_open
    assert not b.record(False, 25)  # closed again: needs a full streak


def test_sticky_roundtrip_and_forgery() -> None:
    secret = b"k" * 32
    value = sticky.sign(secret, "web", "127.0.0.1:8080")
    assert sticky.verify(secret, "web", value) == "127.0.0.1:8080"
    assert sticky.verify(secret, "api", value) is None  # bound to its pool
    assert sticky.verify(b"other", "web", value) is None
    name, mac = value.split(".")
    forged = sticky.sign(b"guess", "web", "127.0.0.2:8080")
    assert sticky.verify(secret, "web", forged) is None
    assert sticky.verify(secret, "web", forged.split(".")[0] + "." + mac) is None
    for junk in (None, "", "abc", "a.b.c", "!!.??", "YQ.YQ"):
        assert sticky.verify(secret, "web", junk) is None


def test_rate_window() -> None:
    r = RateWindow(10)
    for t in range(20):
        r.add(100 + t + 0.5, 5)
    assert r.rate(119.9) == 5.0
    assert r.rate(125.0) == 2.0  # 4 of the 10 seconds 116..125 had traffic
    assert r.rate(200.0) == 0.0


CONFIG = {
    "listen": "127.0.4.2:8080",
    "pools": {
        "web": {"backends": ["127.0.4.10:80", "127.0.4.11:80"], "max_conns": 50},
        "api": {"algorithm": "least_conn", "backends": [{"address": "127.0.4.12:80", "weight": 2, "max_conns": 100}]},
        "ws": {"backends": ["127.0.4.13:80"]},
        "special": {"backends": ["127.0.4.14:80"]},
    },
    "routes": [
        {"path": "/", "pool": "web"},
        {"path": "/api/*", "pool": "api"},
        {"path": "/ws", "pool": "ws", "algorithm": "ip_hash"},
        {"host": "special.example", "pool": "special"},
        {"host": "*.example", "path": "/api", "pool": "web"},
    ],
}


def test_routes_most_specific_wins() -> None:
    _, routes, _ = build(parse(CONFIG))

    def pool(host: str, path: str) -> str:
        r = routes.match(host, path)
        assert r is not None
        return r.pool.name

    assert pool("x", "/") == "web"
    assert pool("x", "/api") == "api"
    assert pool("x", "/api/v1/users") == "api"
    assert pool("x", "/apix") == "web"  # prefixes match whole segments
    assert pool("x:8080", "/ws/chat") == "ws"
    assert pool("special.example:8080", "/api/x") == "special"
    assert pool("a.example", "/api/x") == "web"  # wildcard host beats any-host /api
    assert routes.match("x", "/ws").algorithm == "ip_hash"
    assert routes.match("x", "/api").algorithm == "least_conn"


def test_load_report_capacity_and_saturation() -> None:
    config = parse(CONFIG)
    _, _, live = build(config)
    backends = list(live.values())
    r = load_report(backends, 0.0, 12.5, 120, 0.8, None, "us-east", 1)
    assert (r.healthy_backends, r.total_backends, r.capacity) == (5, 5, 50 + 50 + 100 + 1000 + 1000)
    assert not r.saturated
    for b in backends:
        b.drain_admin = b.key != "127.0.4.10:80"
    r = load_report(backends, 0.0, 0.0, 45, 0.8, None, None, 1)
    assert (r.healthy_backends, r.capacity, r.utilisation, r.saturated) == (1, 50, 0.9, True)
    backends[0].breaker.record(False, 0)
    for _ in range(5):
        backends[0].breaker.record(False, 0)
    r = load_report(backends, 1.0, 0.0, 0, 0.8, None, None, 1)
    assert (r.healthy_backends, r.capacity, r.utilisation, r.saturated) == (0, 0, 1.0, True)


@pytest.mark.parametrize(
    ("method", "version", "fields", "status"),
    [
        ("POST", (1, 1), [("Connection", "content-length"), ("Content-Length", "3")], 400),
        ("POST", (1, 1), [("Connection", "keep-alive,\tTransfer-Encoding ")], 400),
        ("GET", (1, 1), [("Connection", "close"), ("Connection", "HOST")], 400),
        ("GET", (1, 1), [("Host", "a"), ("Host", "b")], 400),
        ("POST", (1, 0), [("Transfer-Encoding", "chunked")], 400),
        ("POST", (1, 1), [("Transfer-Encoding", "gzip, chunked")], 501),
        ("POST", (1, 1), [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], 501),
        ("CONNECT", (1, 1), [("Host", "a:443")], 405),
        ("POST", (1, 1), [("Connection", "keep-alive, x-content-length"), ("Transfer-Encoding", "Chunked")], None),
        ("GET", (1, 1), [("Connection", "upgrade"), ("Upgrade", "websocket")], None),
    ],
)
def test_refusal_of_requests_unsafe_to_forward(method, version, fields, status) -> None:
    refused = refusal(method, version, CIMultiDictProxy(CIMultiDict(fields)))
    assert (refused[0] if refused else None) == status
