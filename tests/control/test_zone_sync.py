"""Zone sync across three real `geodns serve` processes: a PUT on one node is served by all,
pushes are taken only from listed writers and only when they validate, a stale node is flagged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from netutil import wait_until
from prometheus_client.parser import text_string_to_metric_families

from geodns.control.zonestore import content_hash
from geodns.health import keys
from geodns.health.peers import Verifier
from tests.control.conftest import http_request
from tests.gslb.cluster import ask, make_cluster

pytestmark = pytest.mark.slow

TOKEN = "zone-sync-token"
STALE_AFTER = 1.5
LONDON, CALIFORNIA = "81.2.69.0/24", "8.8.8.0/24"

BASE = """\
zone: base.example.test
soa: {mname: ns1, rname: hostmaster, serial: 1}
nameservers: [{name: ns1, glue: [127.0.0.53]}]
records:
  www: {A: [192.0.2.1]}
"""

SYNCED = """\
zone: synced.example.test
soa: {mname: ns1, rname: hostmaster, serial: SERIAL}
nameservers: [{name: ns1, glue: [127.0.0.53]}]
regions:
  eu: {coordinates: [51.5, -0.1], endpoints: [EU]}
  us: {coordinates: [37.4, -122.1], endpoints: [192.0.2.102]}
records:
  www: {steer: [geo_proximity, {limit: 1}]}
"""


def synced(serial: int, eu: str = "192.0.2.101") -> str:
    return SYNCED.replace("SERIAL", str(serial)).replace("EU", eu)


def http(admin: str, method: str, path: str, body: str | None = None, token: str | None = TOKEN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/yaml"
    status, doc, _ = http_request(f"http://{admin}{path}", method, body.encode() if body is not None else None, headers)
    return status, doc


@pytest.fixture
def cluster(tmp_path: Path):
    names = ["z1", "z2", "z3"]
    # z1 and z2 take zones from each other; z3 only from z1.
    accept = {"z1": ["z2"], "z2": ["z1"], "z3": ["z1"]}
    nodes = make_cluster(tmp_path, names, 171)
    geoip = str(Path(__file__).resolve().parents[2] / "data" / "geoip-bundle.mmdb")
    for node in nodes:
        command = node.command
        node.command = lambda zones, token, command=command: [geoip if a == "none" else a for a in command(zones, token)]
        with (node.dir / "node.yaml").open("a") as f:
            f.write(f"zone_sync: {{accept_from: {json.dumps(accept[node.name])}, stale_after: {STALE_AFTER}, interval: 0.3}}\n")
        zones = node.dir / "zones"
        zones.mkdir()
        (zones / "base.yaml").write_text(BASE)
    # z2 has no latency table in its zones directory; z1 and z3 have one.
    for node in (nodes[0], nodes[2]):
        (node.dir / "zones" / "latency.table").write_text("continents:\n  EU: {eu: 10, us: 90}\n")
    try:
        for node in nodes:
            node.start(node.dir / "zones", TOKEN)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def serves(node, name: str, subnet: str, expected: list[str]) -> bool:
    return ask(node.host, node.dns_port, name, subnet) == expected


def test_a_zone_put_on_one_node_is_served_by_all_three(cluster) -> None:
    z1, z2, z3 = cluster
    status, doc = http(z1.admin, "PUT", "/v1/zones/synced.example.test", synced(1))
    assert status == 201, doc
    took = wait_until(lambda: all(serves(n, "www.synced.example.test", LONDON, ["192.0.2.101"]) for n in cluster),
                      10, "the zone served by every node")
    print(f"zone PUT on z1 served by all three nodes after {took:.2f}s")
    assert all(serves(n, "www.synced.example.test", CALIFORNIA, ["192.0.2.102"]) for n in cluster)
    for node in (z2, z3):
        status, listing = http(node.admin, "GET", "/v1/zones", token=None)
        entry = next(z for z in listing["zones"] if z["zone"] == "synced.example.test")
        assert entry["source"] == "peer:z1" and entry["hash"] == content_hash(synced(1))
        assert (node.dir / "zones" / "synced.example.test.yaml").read_text() == synced(1)

    # z2 writes: z1 takes it (it accepts z2), z3 does not (it accepts z1 only) and is flagged.
    def flagged(node, peer: str) -> bool:
        _, listing = http(node.admin, "GET", "/v1/zones", token=None)
        return any(m["peer"] == peer and m["zone"] == "synced.example.test" and m["flagged"] for m in listing["mismatches"])

    written = time.monotonic()
    status, doc = http(z2.admin, "PUT", "/v1/zones/synced.example.test", synced(2, "192.0.2.111"))
    assert status == 200, doc
    wait_until(lambda: serves(z1, "www.synced.example.test", LONDON, ["192.0.2.111"]), 10, "z1 takes z2's zone")
    wait_until(lambda: "does not take zones from z2" in (z2.dir / "serve.log").read_text(), 10, "z3's refusal")
    assert serves(z3, "www.synced.example.test", LONDON, ["192.0.2.101"])
    assert not flagged(z1, "z3")  # a difference is flagged only once it has lasted stale_after
    wait_until(lambda: flagged(z3, "z1") and flagged(z1, "z3"), 10, "the stale node flagged")
    print(f"stale node flagged {time.monotonic() - written:.2f}s after the write (stale_after {STALE_AFTER}s)")
    assert time.monotonic() - written >= STALE_AFTER
    _, status_doc = http(z1.admin, "GET", "/v1/status", token=None)
    zone = next(z for z in status_doc["zones"] if z["zone"] == "synced.example.test")
    assert zone["stale_peers"] == ["z3"] and zone["hash"] == content_hash(synced(2, "192.0.2.111"))
    _, metrics = http(z1.admin, "GET", "/metrics", token=None)
    samples = {(s.labels["peer"], s.labels["zone"]): s.value for f in text_string_to_metric_families(metrics)
               if f.name == "geodns_zone_peer_differs" for s in f.samples}
    assert samples[("z3", "synced.example.test")] == 1.0 and samples.get(("z2", "synced.example.test"), 0.0) == 0.0
    assert "zone differs on a peer zone=synced.example.test peer=z3" in (z1.dir / "serve.log").read_text()

    # z1 writes the zone again: everyone takes it, the flag clears.
    status, doc = http(z1.admin, "PUT", "/v1/zones/synced.example.test", synced(3, "192.0.2.121"))
    assert status == 200, doc
    wait_until(lambda: all(serves(n, "www.synced.example.test", LONDON, ["192.0.2.121"]) for n in cluster), 10, "all take v3")
    wait_until(lambda: not flagged(z1, "z3") and not flagged(z3, "z1"), 10, "the flag clears")

    # A zone that validates on z1 but not on z2 (its latency table is not in z2's directory):
    # z2 refuses it and keeps serving its version; z3 takes it.
    with_table = synced(4, "192.0.2.131") + "latency_table: latency.table\n"
    status, doc = http(z1.admin, "PUT", "/v1/zones/synced.example.test", with_table)
    assert status == 200, doc
    wait_until(lambda: serves(z3, "www.synced.example.test", LONDON, ["192.0.2.131"]), 10, "z3 takes v4")
    wait_until(lambda: "zone from peer refused peer=z1 zone=synced.example.test" in (z2.dir / "serve.log").read_text(),
               10, "z2's refusal")
    assert serves(z2, "www.synced.example.test", LONDON, ["192.0.2.121"])

    # A delete reaches the others too.
    status, doc = http(z1.admin, "DELETE", "/v1/zones/synced.example.test")
    assert status == 200, doc
    wait_until(lambda: all(ask(n.host, n.dns_port, "www.synced.example.test", LONDON) == [] for n in (z1, z3)), 10, "deleted")
    assert not (z3.dir / "zones" / "synced.example.test.yaml").exists()


def test_a_node_that_was_down_takes_the_zone_when_back(cluster) -> None:
    z1, z2, z3 = cluster
    z3.stop()
    status, doc = http(z1.admin, "PUT", "/v1/zones/synced.example.test", synced(1))
    assert status == 201, doc
    wait_until(lambda: serves(z2, "www.synced.example.test", LONDON, ["192.0.2.101"]), 10, "z2 takes it")
    _, listing = http(z1.admin, "GET", "/v1/zones", token=None)
    assert listing["pending_pushes"] == ["z3:synced.example.test"]
    z3.start(z3.dir / "zones", TOKEN)
    wait_until(lambda: serves(z3, "www.synced.example.test", LONDON, ["192.0.2.101"]), 15, "z3 takes it once back")


def test_forged_and_unlisted_pushes_are_refused(cluster) -> None:
    z1, z2, z3 = cluster
    body = json.dumps({"v": 1, "node": "z1", "zone": "base.example.test", "text": BASE.replace("192.0.2.1", "192.0.2.66"),
                       "hash": "x", "at": time.time()}).encode()

    def post(verifier: Verifier, recipient) -> int:
        headers = verifier.sign("zone", recipient.name, body)
        return http_request(f"http://{recipient.admin}/v1/peer/zones", "POST", body, headers, timeout=5)[0]

    # Someone without z1's key, claiming to be z1: refused by the signature.
    assert post(Verifier("z1", keys.generate(), {}), z3) == 401
    # z2's real key, but z3 takes zones from z1 only.
    z2_key, _ = keys.load_private_key(str(z2.dir / "z2.key"))
    body = body.replace(b'"node": "z1"', b'"node": "z2"')
    assert post(Verifier("z2", z2_key, {}), z3) == 403
    assert ask(z3.host, z3.dns_port, "www.base.example.test") == ["192.0.2.1"]
    assert (z3.dir / "zones" / "base.yaml").read_text() == BASE


def test_zone_sync_settings_are_checked() -> None:
    from geodns.control.zone_sync import ZoneSyncSettingsError, settings_from_mapping

    ok = settings_from_mapping({"accept_from": ["a"], "stale_after": 90, "interval": 2, "push": False}, "node.yaml", {"a", "b"})
    assert ok.accept_from == frozenset({"a"}) and ok.stale_after == 90.0 and ok.interval == 2.0 and ok.push is False
    assert settings_from_mapping(None, "node.yaml", set()).accept_from == frozenset()
    for raw, message in (
        ({"accept_from": ["c"]}, "'c' is not one of this node's peers"),
        ({"accept_from": "a"}, "expected a list of peer names"),
        ({"stale_after": float("nan")}, "zone_sync.stale_after"),
        ({"interval": 0}, "zone_sync.interval"),
        ({"push": "yes"}, "zone_sync.push"),
        ({"colour": 1}, "zone_sync.colour: unknown setting"),
        ([1], "expected a mapping"),
    ):
        with pytest.raises(ZoneSyncSettingsError, match=message.replace(".", r"\.")):
            settings_from_mapping(raw, "node.yaml", {"a", "b"})
