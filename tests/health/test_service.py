"""One HealthService against real backends on 127.0.0.x."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import CollectorRegistry

from geodns.config.model import Check
from geodns.health import HealthService, NodeSettings
from geodns.health.plan import choose_observers, plan_zones
from geodns.steer.verdict import VerdictState

from .conftest import make_zone, region, wait_for

FAST = dict(interval=0.1, timeout=0.3, jitter=0.0, fall=2, rise=2)


def service(zones, tmp_path=None, name="n1", **kw):
    calls: list[dict] = []
    settings = NodeSettings(name=name, state_dir=str(tmp_path) if tmp_path else None,
                            exchange_interval=0.2, **kw)
    svc = HealthService(settings, zones, calls.append, registry=CollectorRegistry())
    return svc, calls


async def test_endpoint_up_then_down_then_region_down(backend_factory):
    b1 = await backend_factory("127.0.0.31")
    b2 = await backend_factory("127.0.0.32", b1.port)
    check = Check(kind="http", port=b1.port, path="/health", **FAST)
    zone = make_zone([region("eu", "127.0.0.31", "127.0.0.32", check=check, min_healthy=2)])
    svc, calls = service([zone])
    await svc.start()
    try:
        # Before any decision: up, with a short bound, and the cause says why.
        v = svc.verdicts()["eu/127.0.0.31"]
        assert v.up and v.state is VerdictState.UNKNOWN and v.until <= time.time() + 1.5
        await wait_for(lambda: "1/1 observers" not in svc.verdicts()["eu/127.0.0.31"].cause
                       and svc.verdicts()["eu/127.0.0.31"].cause.startswith("0/1"), 3)
        assert svc.verdicts()["eu"].up
        assert calls and calls[0]["eu"].up
        b2.status = 503
        await wait_for(lambda: not svc.verdicts()["eu"].up, 3)
        v = svc.verdicts()["eu"]
        assert "1/2 endpoints up, below min_healthy 2" in v.cause and "HTTP 503" in v.cause
        assert not calls[-1]["eu"].up
        st = svc.status()
        assert st["regions"]["eu"]["verdict"]["up"] is False
        assert st["targets"]["eu/127.0.0.32"]["observers"]["n1"]["state"] == "down"
        json.dumps(st)
    finally:
        await svc.stop()


async def test_shared_endpoint_is_probed_once_per_interval(backend_factory):
    b = await backend_factory("127.0.0.33")
    check = Check(kind="http", port=b.port, interval=0.2, timeout=0.3, jitter=0.0)
    zones = [make_zone([region("eu", "127.0.0.33", check=check)], "a.example"),
             make_zone([region("eu2", "127.0.0.33", check=check)], "b.example")]
    svc, _ = service(zones)
    await svc.start()
    await asyncio.sleep(1.1)
    await svc.stop()
    # one probe every 0.2 s for ~1.1 s (started within the first interval): <= 6
    assert 3 <= b.hits <= 6, b.hits
    assert set(svc.verdicts()) >= {"eu/127.0.0.33", "eu2/127.0.0.33", "eu", "eu2"}


async def test_probes_in_flight_are_capped(backend_factory):
    b = await backend_factory("127.0.0.34")
    b.hang = True
    check = Check(kind="http", port=b.port, interval=0.1, timeout=0.5, jitter=0.0)
    addrs = [f"127.0.0.{i}" for i in range(40, 50)]
    zone = make_zone([region("eu", *addrs, check=Check(**{**_fields(check), "host": "127.0.0.34"}))])
    svc, _ = service([zone], max_probes_in_flight=3)
    await svc.start()
    await asyncio.sleep(0.4)
    in_flight = b.hits
    await svc.stop()
    assert in_flight <= 3


def _fields(check: Check) -> dict:
    return {f: getattr(check, f) for f in check.__dataclass_fields__}


async def test_drain_wins_persists_and_survives_restart(backend_factory, tmp_path):
    b = await backend_factory("127.0.0.35")
    check = Check(kind="http", port=b.port, **FAST)
    zone = make_zone([region("eu", "127.0.0.35", check=check)])
    svc, calls = service([zone], tmp_path)
    await svc.start()
    try:
        v = svc.drain("eu", "datacentre maintenance")
        assert not v.up and v.forced and "datacentre maintenance" in v.cause
        assert calls[-1]["eu"].forced
        with pytest.raises(KeyError):
            svc.drain("nowhere", "x")
        assert svc.status()["drains"]["eu"]["reason"] == "datacentre maintenance"
    finally:
        await svc.stop()
    svc2, calls2 = service([zone], tmp_path)
    await svc2.start()
    try:
        assert not svc2.verdicts()["eu"].up and svc2.verdicts()["eu"].forced
        assert calls2[0]["eu"].forced
        svc2.undrain("eu")
        assert svc2.verdicts()["eu"].up and not svc2.verdicts()["eu"].forced
    finally:
        await svc2.stop()
    svc3, _ = service([zone], tmp_path)
    assert not svc3.verdicts()["eu"].forced


async def test_warm_start_from_saved_state_not_all_up(backend_factory, tmp_path):
    b = await backend_factory("127.0.0.36")
    b.status = 500
    check = Check(kind="http", port=b.port, **FAST)
    zone = make_zone([region("eu", "127.0.0.36", check=check)])
    svc, _ = service([zone], tmp_path)
    await svc.start()
    await wait_for(lambda: not svc.verdicts()["eu"].up, 3)
    await svc.stop()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["verdicts"]["eu/127.0.0.36"]["up"] is False
    assert saved["verdicts"]["eu/127.0.0.36"]["state"] == "down"
    # A restarted node says down at once, from its saved state, before probing.
    slow = Check(kind="http", port=b.port, interval=5, timeout=0.3, jitter=0.0)
    svc2, calls = service([make_zone([region("eu", "127.0.0.36", check=slow)])], tmp_path)
    # same check key is not required: the saved verdict is per target
    v = svc2.verdicts()["eu/127.0.0.36"]
    assert not v.up and "saved state from" in v.cause and v.until <= time.time() + 1.5
    assert v.state is VerdictState.FALLBACK
    assert not svc2.verdicts()["eu"].up


def test_saved_state_of_an_older_node_is_read(tmp_path):
    # state.json written before verdicts carried a state: up and cause only.
    (tmp_path / "state.json").write_text(json.dumps({"node": "n1", "saved_at": time.time() - 5, "verdicts": {
        "eu/127.0.0.36": {"up": False, "cause": "1/1 observers say down"},
        "eu/127.0.0.99": {"up": "no"},
    }}))
    check = Check(kind="http", port=9, interval=5, timeout=0.3, jitter=0.0)
    svc, _ = service([make_zone([region("eu", "127.0.0.36", check=check)])], tmp_path)
    v = svc.verdicts()["eu/127.0.0.36"]
    assert not v.up and v.state is VerdictState.FALLBACK and "1/1 observers say down" in v.cause
    assert not svc.verdicts()["eu"].up


async def test_balancer_check_fails_region(backend_factory):
    b = await backend_factory("127.0.0.37")
    lb = await backend_factory("127.0.0.38")
    lb.status = 503
    zone = make_zone([region("eu", "127.0.0.37", check=Check(kind="http", port=b.port, **FAST),
                             balancer=Check(kind="http", host="127.0.0.38", port=lb.port, path="/v1/load",
                                            **FAST))])
    svc, _ = service([zone])
    await svc.start()
    try:
        await wait_for(lambda: not svc.verdicts()["eu"].up, 3)
        assert "balancer check down" in svc.verdicts()["eu"].cause
        assert svc.verdicts()["eu/127.0.0.37"].up
    finally:
        await svc.stop()


async def test_reconfigure_adds_and_removes_probes(backend_factory):
    b = await backend_factory("127.0.0.39")
    check = Check(kind="http", port=b.port, **FAST)
    svc, _ = service([make_zone([region("eu", "127.0.0.39", check=check)])])
    await svc.start()
    try:
        svc.reconfigure([make_zone([region("us", "127.0.0.39", check=check)])])
        assert "eu" not in svc.verdicts() and "us" in svc.verdicts()
        await wait_for(lambda: svc.verdicts()["us/127.0.0.39"].cause.startswith("0/1"), 3)
    finally:
        await svc.stop()


def test_k_of_n_observers_is_stable_and_spread():
    members = ["n1", "n2", "n3", "n4", "n5"]
    picks = [choose_observers(members, f"10.0.0.{i}", 2) for i in range(200)]
    assert all(len(p) == 2 for p in picks)
    assert choose_observers(members, "10.0.0.7", 2) == picks[7]
    load = {m: sum(m in p for p in picks) for m in members}
    assert all(50 <= n <= 110 for n in load.values()), load
    assert choose_observers(members, "x", None) == frozenset(members)
    check = Check(kind="tcp", port=80, observers=1)
    zone = make_zone([region("eu", *[f"10.0.0.{i}" for i in range(30)], check=check)])
    runs = [len(plan_zones([zone], m, members).probes) for m in members]
    assert sum(runs) == 30


async def test_isolated_node_uses_its_own_view_and_says_so(backend_factory):
    from .conftest import free_port

    b = await backend_factory("127.0.0.76")
    b.status = 503
    dead_peer = f"http://127.0.0.77:{free_port('127.0.0.77')}"  # nobody listens there
    zone = make_zone([region("eu", "127.0.0.76", check=Check(kind="http", port=b.port, **FAST))])
    registry = CollectorRegistry()
    from .conftest import keypairs, peer

    pair = keypairs("n1", "n2")
    settings = NodeSettings(name="n1", peers=(peer("n2", dead_peer, pair["n2"]),), private_key=pair["n1"],
                            exchange_interval=0.1)
    svc = HealthService(settings, [zone], registry=registry)
    await svc.start()
    try:
        await wait_for(lambda: not svc.verdicts()["eu"].up, 3)
        assert svc.isolated and svc.status()["isolated"]
        assert svc.verdicts()["eu/127.0.0.76"].cause.startswith("isolated, own view only: 1/1")
        assert registry.get_sample_value("geodns_health_isolated") == 1
        assert registry.get_sample_value(
            "geodns_peer_exchange_errors_total", {"peer": "n2", "reason": "unreachable"}) >= 1
        assert svc.status()["peers"]["n2"]["last_error"].startswith("Client")
    finally:
        await svc.stop()


async def test_published_bounds_are_refreshed_when_they_pass(backend_factory):
    b = await backend_factory("127.0.0.78")
    check = Check(kind="http", port=b.port, interval=0.2, timeout=0.2, jitter=0.0, fall=2, rise=1)
    svc, calls = service([make_zone([region("eu", "127.0.0.78", check=check)])])
    await svc.start()
    try:
        await asyncio.sleep(2.5)
        # no up/down change after the first decision, yet the mapping was
        # republished as bounds expired (at most about once a second)
        assert all(c["eu"].up for c in calls)
        assert 2 <= len(calls) <= 6, len(calls)
        v = svc.verdicts()["eu/127.0.0.78"]
        assert v.until is not None and time.time() - 0.5 < v.until <= time.time() + 2 * 0.2 + 0.5
    finally:
        await svc.stop()
