"""Reading a region's own balancer: HAProxy, nginx and Envoy status pages.

The pages under data/ were written by the balancers themselves (see
data/README.md); the probe tests serve them from a real aiohttp server.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from aiohttp import web

from geodns.config.model import Check
from geodns.health.lbstatus import (
    BODY_LIMIT,
    PoolStatus,
    StatusUnreadable,
    parse_envoy_clusters,
    parse_haproxy,
    parse_haproxy_csv,
    parse_haproxy_prometheus,
    parse_nginx_stub_status,
    parse_status,
    pool_verdict,
)
from geodns.health.probes import probe

from .conftest import free_port

DATA = Path(__file__).with_name("data")
HAPROXY_CSV = (DATA / "haproxy-2.6-stats.csv").read_text()
HAPROXY_PROM = (DATA / "haproxy-2.6-metrics.txt").read_text()
NGINX = (DATA / "nginx-1.22-stub_status.txt").read_text()
ENVOY_HANDLER = (DATA / "envoy-clusters-handler-test.json").read_text()
ENVOY_REQUEST = (DATA / "envoy-clusters-request-test.json").read_text()


# --- HAProxy --------------------------------------------------------------------------

def test_haproxy_csv_counts_only_up_servers_and_measures_sessions_against_maxconn():
    s = parse_haproxy_csv(HAPROXY_CSV, "www")
    assert (s.up, s.total) == (1, 5)
    assert s.not_up == ("s2 DOWN", "s3 MAINT", "s4 DRAIN", "s5 NOLB")
    # s1 holds 2 sessions at maxconn 2 and 3 more wait in the backend's queue.
    assert (s.in_use, s.queued, s.limit) == (5.0, 3.0, 2.0)
    assert s.utilisation == pytest.approx(2.5)
    ok, detail = pool_verdict(s, 2)
    assert not ok
    assert detail == ("haproxy www: 1/5 servers up (min_up 2): s2 DOWN, s3 MAINT, s4 DRAIN, s5 NOLB; "
                      "2 sessions + 3 queued of 2 (250%)")
    assert pool_verdict(s, 1)[0] is True
    assert pool_verdict(s, 0)[0] is True


def test_haproxy_prometheus_reads_the_same_moment_the_same_way():
    csv_status = parse_haproxy_csv(HAPROXY_CSV, "www")
    prom = parse_haproxy_prometheus(HAPROXY_PROM, "www")
    assert prom == csv_status
    assert parse_haproxy(HAPROXY_PROM, "www") == parse_haproxy(HAPROXY_CSV, "www")


def test_haproxy_no_check_server_is_up_and_the_backend_limit_stands_in_for_maxconn():
    s = parse_haproxy_csv(HAPROXY_CSV, "other")
    assert (s.up, s.total, s.not_up) == (1, 1, ())
    assert s.limit == 1.0  # o1 has no maxconn: the backend's own session limit
    assert parse_haproxy_prometheus(HAPROXY_PROM, "other").up == 1


@pytest.mark.parametrize("state, up", [("UP 1/3", True), ("DOWN 1/2", False), ("MAINT (via www/s1)", False),
                                       ("NOLB 1/2", False), ("DRAIN (agent)", False), ("no check", True)])
def test_haproxy_transitional_states(state, up):
    text = HAPROXY_CSV.replace(",DOWN,1,1,0,", f",{state},1,1,0,", 1)  # s2's row
    s = parse_haproxy_csv(text, "www")
    assert (s.up == 2) is up, s


def test_haproxy_errors_say_what_is_wrong():
    with pytest.raises(StatusUnreadable, match=r"no backend 'api' in the status \(found: other, www\)"):
        parse_haproxy_csv(HAPROXY_CSV, "api")
    with pytest.raises(StatusUnreadable, match="no backend 'api'"):
        parse_haproxy_prometheus(HAPROXY_PROM, "api")
    with pytest.raises(StatusUnreadable, match="not Prometheus metrics"):
        parse_haproxy("<html>stats</html>", "www")
    with pytest.raises(StatusUnreadable, match="not CSV stats"):
        parse_haproxy_csv("pxname,svname\n", "www")
    bad = HAPROXY_CSV.replace("www,s1,0,0,2,", "www,s1,0,0,lots,", 1)
    with pytest.raises(StatusUnreadable, match="scur='lots' is not a count"):
        parse_haproxy_csv(bad, "www")


# --- nginx ----------------------------------------------------------------------------

def test_nginx_stub_status_is_active_connections_against_the_stated_capacity():
    s = parse_nginx_stub_status(NGINX)
    assert (s.up, s.total, s.in_use, s.limit) == (None, None, 4.0, None)
    assert s.utilisation is None
    s = s.with_capacity(10)
    assert s.utilisation == pytest.approx(0.4)
    assert pool_verdict(s, 1) == (True, "nginx: 4 active connections of 10 (40%)")
    with pytest.raises(StatusUnreadable, match="not a stub_status page"):
        parse_nginx_stub_status("<html>Welcome to nginx!</html>")


# --- Envoy ----------------------------------------------------------------------------

def test_envoy_host_flags_from_envoys_own_admin_test():
    s = parse_envoy_clusters(ENVOY_HANDLER, "fake_cluster")
    assert (s.up, s.total) == (0, 1)
    assert s.not_up == ("1.2.3.4:80 failed_active_health_check/failed_outlier_check/pending_dynamic_removal",)
    assert s.utilisation == 0.0  # no cx_active/rq_active on the host: nothing in flight
    ok, detail = pool_verdict(s, 1)
    assert not ok and detail.startswith("envoy fake_cluster: 0/1 servers up (min_up 1): 1.2.3.4:80 failed_active")

    s = parse_envoy_clusters(ENVOY_REQUEST, "test_cluster")
    assert (s.up, s.total) == (0, 1)
    assert s.not_up[0].startswith("1.2.3.4:80 ") and s.not_up[0].endswith("/eds DRAINING")
    assert s.limit == 1024.0


def test_envoy_degraded_host_still_serves_and_load_is_the_nearer_circuit_breaker():
    doc = json.loads(ENVOY_HANDLER)
    host = doc["cluster_statuses"][0]["host_statuses"][0]
    host["health_status"] = {"eds_health_status": "DEGRADED", "failed_active_degraded_check": True}
    host["stats"].append({"name": "cx_active", "value": "3", "type": "GAUGE"})
    host["stats"].append({"name": "rq_active", "type": "GAUGE"})  # proto3 JSON leaves a zero out
    s = parse_envoy_clusters(json.dumps(doc), "fake_cluster")
    assert (s.up, s.total, s.not_up) == (1, 1, ())
    # 3 connections against max_connections 1 beats 0 requests against max_requests 1024.
    assert (s.in_use, s.limit, s.unit) == (3.0, 1.0, "active connections")
    assert s.utilisation == pytest.approx(3.0)


def test_envoy_errors_say_what_is_wrong():
    with pytest.raises(StatusUnreadable, match=r"no cluster 'www' in the status \(found: fake_cluster\)"):
        parse_envoy_clusters(ENVOY_HANDLER, "www")
    with pytest.raises(StatusUnreadable, match="not JSON"):
        parse_envoy_clusters("fake_cluster::default_priority::max_connections::1", "fake_cluster")
    with pytest.raises(StatusUnreadable, match="no cluster_statuses"):
        parse_envoy_clusters("[1, 2]", "fake_cluster")


def test_stated_capacity_overrides_the_balancers_limits():
    check = Check(kind="haproxy", url="http://x/stats;csv", pool="www", capacity=50)
    s = parse_status(check, HAPROXY_CSV)
    assert (s.in_use, s.limit) == (5.0, 50.0)
    assert isinstance(s, PoolStatus) and s.utilisation == pytest.approx(0.1)


@pytest.mark.parametrize("kind, page, pool", [
    ("haproxy", HAPROXY_CSV, "www"), ("haproxy", HAPROXY_PROM, "www"),
    ("nginx", NGINX, None), ("envoy", ENVOY_HANDLER, "fake_cluster"), ("envoy", ENVOY_REQUEST, "test_cluster"),
])
def test_any_damage_to_a_page_is_a_reading_or_a_refusal(kind, page, pool):
    """Cut, spliced, retyped or bloated pages: a PoolStatus or StatusUnreadable, nothing else."""
    import random

    rng = random.Random(f"{kind}{pool}{len(page)}")
    check = Check(kind=kind, url="http://x/", pool=pool, capacity=100 if kind == "nginx" else None)
    junk = ["", "\x00", ",", "\n", '"', "{", "}", "[", "]", "-1", "1e999", "NaN", "null", "true", '"x"', "9" * 400, "[" * 5000, "\ufffd"]
    for _ in range(400):
        text = page
        for _ in range(rng.randint(1, 4)):
            at, cut = rng.randrange(len(text) + 1), rng.randint(0, 40)
            text = text[:at] + rng.choice(junk) + text[at + cut:]
        try:
            s = parse_status(check, text)
        except StatusUnreadable:
            continue
        assert isinstance(s, PoolStatus)
        assert s.utilisation is None or s.utilisation >= 0
    if kind == "envoy":  # every field of the right name holding the wrong type
        doc = json.loads(page)
        host = doc["cluster_statuses"][0]["host_statuses"][0]
        for key, value in [("stats", 5), ("health_status", [1]), ("address", "1.2.3.4"), ("stats", [{"name": "rq_active", "value": {}}])]:
            bent = json.loads(json.dumps(doc))
            bent["cluster_statuses"][0]["host_statuses"][0] = {**host, key: value}
            with contextlib.suppress(StatusUnreadable):
                parse_status(check, json.dumps(bent))


# --- the probe, over HTTP ---------------------------------------------------------------

@pytest.fixture
async def status_server():
    """A real HTTP server that serves whatever page a test sets, and records raw paths."""
    state = {"body": HAPROXY_CSV, "status": 200, "paths": []}

    async def handle(request: web.Request) -> web.Response:
        state["paths"].append(request.raw_path)
        return web.Response(status=state["status"], body=state["body"].encode() if isinstance(state["body"], str) else state["body"])

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    host, port = "127.0.0.2", free_port("127.0.0.2")
    await web.TCPSite(runner, host, port).start()
    yield f"http://{host}:{port}", state
    await runner.cleanup()


async def test_probe_reads_haproxy_over_http(status_server):
    base, state = status_server
    check = Check(kind="haproxy", url=f"{base}/stats;csv", pool="www", min_up=2)
    r = await probe(check, "192.0.2.1")
    assert not r.ok
    assert r.detail.startswith("haproxy www: 1/5 servers up (min_up 2)")
    assert state["paths"] == ["/stats;csv"]  # as written: HAProxy wants `;csv`, not %3Bcsv
    r = await probe(Check(kind="haproxy", url=f"{base}/stats;csv", pool="www", min_up=1), "192.0.2.1")
    assert r.ok, r


async def test_probe_fails_on_a_bad_answer(status_server):
    base, state = status_server
    check = Check(kind="nginx", url=f"{base}/stub_status", capacity=100)
    state["body"] = NGINX
    assert (await probe(check, "192.0.2.1")).ok
    state["status"] = 503
    r = await probe(check, "192.0.2.1")
    assert not r.ok and r.detail == f"nginx: HTTP 503 from {base}/stub_status"
    state["status"], state["body"] = 200, "<html>It works!</html>"
    r = await probe(check, "192.0.2.1")
    assert not r.ok and "not a stub_status page" in r.detail
    state["body"] = b"x" * (BODY_LIMIT + 10)
    r = await probe(check, "192.0.2.1")
    assert not r.ok and "larger than" in r.detail
    r = await probe(Check(kind="envoy", url="http://127.0.0.2:1/clusters?format=json", pool="www"), "192.0.2.1")
    assert not r.ok and "ClientConnectorError" in r.detail
