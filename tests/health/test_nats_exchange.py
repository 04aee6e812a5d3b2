"""The NATS JetStream exchange against real `nats-server` processes on loopback:
drains raced by two operators, losing NATS and getting it back, and a
three-server NATS cluster losing a server mid-run.

The three-node failover, drain, warm-start and wrong-observer cases run over
both exchanges in test_cluster.py; attacks in tests/gslb/test_peer_trust.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import nats as nats_client
import pytest
from natsutil import nats_servers, needs_nats

from geodns.config.model import Check
from geodns.control import latency_probe
from geodns.control.controller import Controller
from geodns.health import peers as _peers
from geodns.health.nats_exchange import envelope, key_token
from geodns.steer.measured import parse_network

from .conftest import make_zone, region, wait_for
from .test_cluster import EXCHANGE, FALL, INTERVAL, KEYS, RISE, cluster

pytestmark = [pytest.mark.slow, needs_nats]
HOST = "127.0.0.65"


def check(port: int, observers: int | None = None) -> Check:
    return Check(kind="http", port=port, path="/health", interval=INTERVAL, timeout=0.2,
                 jitter=0.02, fall=FALL, rise=RISE, observers=observers)


async def test_two_operators_at_once_end_in_one_state_everywhere(backend_factory, tmp_path):
    """n1 drains and n2 undrains the same region in the same instant, again
    and again: every node, and the bucket, end on the later request (`at`,
    then node name: the rule of the built-in exchange), and the bucket keeps
    the history."""
    eu = await backend_factory("127.0.0.76")
    zones = [make_zone([region("eu", "127.0.0.76", check=check(eu.port))])]
    with nats_servers(tmp_path / "nats", HOST) as servers:
        async with cluster(zones, tmp_path, nats_urls=[servers[0].url]) as nodes:
            n1, n2, n3 = nodes
            for i in range(6):
                first, second = (n1, n2) if i % 2 else (n2, n1)
                first.svc.drain("eu", f"round {i}") if first is n1 else first.svc.undrain("eu")
                second.svc.drain("eu", f"round {i}") if second is n1 else second.svc.undrain("eu")
                await asyncio.sleep(0.01 * (i % 3))

            def winner():
                held = [n.svc._drains["eu"] for n in nodes if "eu" in n.svc._drains]
                return max(held, key=lambda d: (d.at, d.by)) if len(held) == 3 else None

            await wait_for(lambda: winner() is not None and all(n.svc._drains["eu"] == winner() for n in nodes), 5)
            final = winner()
            assert all(n.up("eu") == (not final.active) for n in nodes)
            nc = await nats_client.connect(servers[0].url)
            try:
                kv = await nc.jetstream().key_value("geodns-drains")

                async def bucket_holds_final() -> bool:
                    entry = await kv.get(f"drain.{key_token('eu')}")
                    doc = json.loads(entry.value)
                    return (doc["at"], doc["by"], doc["active"]) == (final.at, final.by, final.active)

                deadline = time.monotonic() + 5
                while not await bucket_holds_final():
                    assert time.monotonic() < deadline, "the bucket does not hold the final drain"
                    await asyncio.sleep(0.05)
                history = await kv.history(f"drain.{key_token('eu')}")
                assert len(history) >= 2  # both operators' writes are in it
                assert {json.loads(e.value)["by"] for e in history} == {"n1", "n2"}
            finally:
                await nc.close()
            shown = n3.svc.status()["exchange"]["drain_history"]["eu"]
            assert shown and shown[-1]["by"] == final.by


async def test_losing_nats_keeps_last_verdicts_and_nothing_flaps_when_it_returns(backend_factory, tmp_path):
    """eu/…76 is probed by one node only (observers: 1). NATS stops: that node
    goes on deciding from its own probes, the two others keep its last verdict
    (no flip to 'unknown: up'); NATS comes back: no verdict flapped."""
    eu = await backend_factory("127.0.0.77")
    eu.status = 503
    zones = [make_zone([region("eu", "127.0.0.77", check=check(eu.port, observers=1))])]
    target = "eu/127.0.0.77"
    with nats_servers(tmp_path / "nats", HOST) as servers:
        async with cluster(zones, tmp_path, nats_urls=[servers[0].url]) as nodes:
            await wait_for(lambda: all(not n.up("eu") for n in nodes), 5)
            observer = next(n for n in nodes if target in n.svc._own)
            others = [n for n in nodes if n is not observer]
            marks = [len(n.published) for n in nodes]
            servers[0].stop()
            # long past the point where the observer's view would have gone stale
            stale = others[0].svc._stale_after(target)
            await wait_for(lambda: all(n.svc.status()["exchange"]["lost_since"] for n in nodes), 5)
            await asyncio.sleep(stale + 1.0)
            for n in others:
                v = n.svc.verdicts()[target]
                assert not v.up and "NATS unreachable since" in v.cause, v
            # Probing goes on: the backend recovers, the observer sees it on its own.
            eu.status = 200
            await wait_for(lambda: observer.up("eu"), 5)
            assert not any(n.up("eu") for n in others)
            servers[0].start()
            await wait_for(lambda: all(n.up("eu") for n in nodes), 10)
            await wait_for(lambda: not any(n.svc.status()["exchange"]["lost_since"] for n in nodes), 10)
            # Each node changed its mind once (down -> up), never flipped through 'unknown'.
            for n, mark in zip(nodes, marks, strict=True):
                states = [p["eu"].up for p in n.published[mark:]]
                flips = sum(1 for a, b in zip(states, states[1:], strict=False) if a != b)
                assert flips <= 1 and states[-1], (n.name, states)


async def test_a_nats_cluster_losing_a_server_mid_run_still_moves_failover(backend_factory, tmp_path):
    """Three routed NATS servers, buckets replicated on all three; one server
    is stopped mid-run: every node still takes a region's death."""
    us = await backend_factory("127.0.0.78")
    port = us.port
    zones = [make_zone([region("us", "127.0.0.78", check=check(port))])]
    with nats_servers(tmp_path / "nats", HOST, n=3) as servers:
        async with cluster(zones, tmp_path, nats_urls=[s.url for s in servers]) as nodes:
            await wait_for(lambda: all(n.svc.verdicts()["us/127.0.0.78"].cause.startswith("0/3") for n in nodes), 15)
            servers[0].stop()
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            await us.stop()
            await wait_for(lambda: not any(n.up("us") for n in nodes), 10, step=0.01)
            took = time.monotonic() - killed
            print(f"\nNATS cluster minus one server: us down on all 3 nodes in {took:.2f}s "
                  f"(interval {INTERVAL}s, fall {FALL}, exchange {EXCHANGE}s)")
            # every node says so from a quorum of views, not each from its own alone: at least
            # two of the three (a node whose NATS server left may still be re-watching the
            # bucket through another server, its peers' views a moment old)
            def by_quorum(cause: str) -> bool:  # "K/M observers say down": K views, not one
                downs = cause.split("/", 1)[0]
                return downs.isdigit() and int(downs) >= 2

            await wait_for(lambda: all(by_quorum(n.svc.verdicts()["us/127.0.0.78"].cause) for n in nodes), 20)
            await us.start(port)
            await wait_for(lambda: all(n.up("us") for n in nodes), 10)


async def test_latency_rows_travel_over_nats_signed_and_a_forgery_is_refused(tmp_path):
    """Nodes measuring latency in a NATS fleet share their RTT rows through the
    `geodns-latency` bucket (no peer URLs at all): each ranks the others' rows with
    its own, as over HTTP. Rows under another node's key, or signed by a stranger,
    are refused and counted."""
    root = Path(__file__).resolve().parents[2]
    regions = {"n1": "eu-west", "n2": "us-east", "n3": "ap-southeast"}
    services = {}

    def attach(node) -> None:
        controller = Controller(str(root / "zones"), str(root / "data" / "geoip-bundle.mmdb"), None)
        controller.start()
        settings = latency_probe.LatencySettings(region=regions[node.name], exchange_interval=0.2,
                                                 peer_regions={p: r for p, r in regions.items() if p != node.name})
        services[node.name] = latency_probe.attach(None, node.svc, settings, controller)

    network = parse_network("203.0.113.0/24")
    address = int.from_bytes(bytes([203, 0, 113, 9]), "big")
    with nats_servers(tmp_path / "nats", HOST) as servers:
        async with cluster([make_zone([region("eu", "127.0.0.77")])], tmp_path, nats_urls=[servers[0].url],
                           before_start=attach) as nodes:
            assert all(s.peers == {} for s in services.values()), "no HTTP exchange in a NATS fleet"
            services["n1"].sample(network, address, 9.0, time.time())
            services["n2"].sample(network, address, 90.0, time.time())
            n3 = services["n3"]
            await wait_for(lambda: all(p in n3.peer_rows and network in n3.peer_rows[p].rows for p in ("n1", "n2")), 10)
            n3.recompute(time.time())
            assert n3.measured.rows[network] == (("eu-west", 9.0), ("us-east", 90.0))

            # n1's key writing under n2's name, and a key no node knows: refused by every reader.
            nc = await nats_client.connect(servers[0].url)
            try:
                kv = await nc.jetstream().key_value("geodns-latency")
                forged = _peers.encode({"v": 1, "node": "n2", "region": "us-east", "rows": [["203.0.113.9", 1.0, 0]]})
                liar = _peers.Verifier("n1", KEYS["n1"], {})
                await kv.put(f"latency.{key_token('n2')}", envelope(liar.sign("latency", "nats:geodns", forged), forged))
                from geodns.health import keys

                stranger = _peers.Verifier("n2", keys.generate(), {})
                await kv.put(f"latency.{key_token('n2')}", envelope(stranger.sign("latency", "nats:geodns", forged), forged))
                # Keys no node has, made up by the credential holder: refused, and not remembered.
                for i in range(40):
                    await kv.put(f"latency.ghost{i}", envelope(stranger.sign("latency", "nats:geodns", forged), forged))
            finally:
                await nc.close()

            def refused(node, reason: str) -> float:
                return node.registry.get_sample_value("geodns_peer_messages_rejected_total",
                                                      {"reason": reason, "peer": "n1" if reason == "wrong_peer" else "n2"}) or 0

            await wait_for(lambda: refused(nodes[2], "wrong_peer") >= 1 and refused(nodes[2], "bad_signature") >= 41, 10)
            assert set(nodes[2].svc.nats._taken) <= {f"{kind}.{n}" for kind in ("views", "latency") for n in ("n1", "n2", "n3")}
            n3.recompute(time.time())
            assert n3.measured.rows[network] == (("eu-west", 9.0), ("us-east", 90.0)), "still what n2 really said"
