"""Zone versions over NATS: three real `geodns serve` nodes exchanging through a
real `nats-server`, no peer URLs. Each node publishes the hash of each zone it
serves with its signed views; a node serving another version is flagged on
the others (zone sync's own comparison, fed from NATS instead of HTTP reads)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from natsutil import nats_servers, needs_nats
from netutil import wait_until

from geodns.control.zonestore import content_hash
from tests.control.test_zone_sync import BASE, TOKEN, http, synced
from tests.gslb.cluster import make_cluster

pytestmark = [pytest.mark.slow, needs_nats]
STALE_AFTER = 1.0


def flagged(node, peer: str, zone: str = "synced.example.test") -> bool:
    _, listing = http(node.admin, "GET", "/v1/zones", token=None)
    return any(m["peer"] == peer and m["zone"] == zone and m["flagged"] for m in listing["mismatches"])


def test_a_node_serving_another_zone_version_is_flagged_through_nats(tmp_path: Path) -> None:
    with nats_servers(tmp_path / "nats", "127.0.0.199") as servers:
        nodes = make_cluster(tmp_path, ["y1", "y2", "y3"], 193, nats=[servers[0].url])
        for node in nodes:
            with (node.dir / "node.yaml").open("a") as f:
                f.write(f"zone_sync: {{stale_after: {STALE_AFTER}, interval: 0.3}}\n")
            (node.dir / "zones").mkdir()
            (node.dir / "zones" / "base.yaml").write_text(BASE)
        try:
            for node in nodes:
                node.start(node.dir / "zones", TOKEN)
            y1, y2, y3 = nodes
            # Every node puts the same version through its own API: nobody is flagged.
            for node in nodes:
                status, doc = http(node.admin, "PUT", "/v1/zones/synced.example.test", synced(1))
                assert status == 201, doc
            time.sleep(STALE_AFTER + 1.0)
            assert not any(flagged(a, b.name) for a in nodes for b in nodes if a is not b)
            # y1 changes its version alone (no URLs: nothing is pushed): the others flag y1, y1 flags them.
            written = time.monotonic()
            status, doc = http(y1.admin, "PUT", "/v1/zones/synced.example.test", synced(2, "192.0.2.111"))
            assert status == 200, doc
            took = wait_until(lambda: flagged(y2, "y1") and flagged(y3, "y1") and flagged(y1, "y2"), 10,
                              "the node with another version flagged everywhere")
            print(f"\nzone version differing on y1 flagged on every node {took:.2f}s after the write "
                  f"(stale_after {STALE_AFTER}s)")
            assert time.monotonic() - written >= STALE_AFTER
            _, status_doc = http(y2.admin, "GET", "/v1/status", token=None)
            zone = next(z for z in status_doc["zones"] if z["zone"] == "synced.example.test")
            assert zone["stale_peers"] == ["y1"] and zone["hash"] == content_hash(synced(1))
            # The others catch up: the flags clear.
            for node in (y2, y3):
                status, doc = http(node.admin, "PUT", "/v1/zones/synced.example.test", synced(2, "192.0.2.111"))
                assert status == 200, doc
            wait_until(lambda: not any(flagged(a, b.name) for a in nodes for b in nodes if a is not b), 10,
                       "the flags clear")
        finally:
            for node in nodes:
                node.stop()
