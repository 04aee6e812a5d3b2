"""Three HealthService nodes on 127.0.0.x exchanging signed views over HTTP,
or over a real `nats-server` with JetStream (the `exchange` parameter),
watching real aiohttp backends: partial views, failover timing, drains."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import pytest
from aiohttp import web
from natsutil import NATS_SERVER, nats_servers
from prometheus_client import CollectorRegistry

from geodns.config.model import Check
from geodns.health import HealthService, NodeSettings
from geodns.health.nats_settings import NatsSettings
from geodns.steer.verdict import VerdictState

from .conftest import free_port, keypairs, make_zone, peer, region, wait_for

pytestmark = pytest.mark.slow

KEYS = keypairs("n1", "n2", "n3")
INTERVAL, FALL, RISE, EXCHANGE = 0.2, 3, 2, 0.2
NODES = {"n1": "127.0.0.61", "n2": "127.0.0.62", "n3": "127.0.0.63"}
NATS_HOST = "127.0.0.64"

exchanges = pytest.mark.parametrize("exchange", [
    "http",
    pytest.param("nats", marks=pytest.mark.skipif(NATS_SERVER is None, reason="nats-server not installed")),
])


class Node:
    def __init__(self, name: str, settings: NodeSettings, zones, port: int) -> None:
        self.name, self.settings, self.zones, self.port = name, settings, zones, port
        self.published: list[dict] = []
        self.registry = CollectorRegistry()
        self.svc = HealthService(settings, zones, self.published.append, registry=self.registry)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        self.svc.add_routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, NODES.get(self.name, "127.0.0.69"), self.port).start()
        await self.svc.start()

    async def stop(self) -> None:
        await self.svc.stop()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def up(self, target: str) -> bool:
        return self.svc.verdicts()[target].up


@contextlib.asynccontextmanager
async def cluster(zones, tmp_path, exchange: str = "http", nats_urls: list[str] | None = None, before_start=None):
    """Three nodes; over NATS (`exchange="nats"`), one `nats-server` with
    JetStream started here, or the servers at `nats_urls` (the test's own),
    named in the nodes' settings instead of pushing to each other.
    `before_start(node)`: what a serving node attaches to its health service first."""
    with contextlib.ExitStack() as stack:
        if exchange == "nats" and nats_urls is None:
            nats_urls = [stack.enter_context(nats_servers(tmp_path / "nats", NATS_HOST))[0].url]
        nats = None
        if nats_urls:
            # each node tries the servers in its own order: the connections spread over them
            nats = NatsSettings(servers=tuple(nats_urls), replicas=min(3, len(nats_urls)))
        ports = {name: free_port(addr) for name, addr in NODES.items()}
        nodes = []
        for name, addr in NODES.items():
            settings = NodeSettings(
                name=name, private_key=KEYS[name], exchange_interval=EXCHANGE, source_address=addr,
                state_dir=str(tmp_path / name),
                nats=nats and replace(nats, servers=nats.servers[len(nodes):] + nats.servers[:len(nodes)]),
                peers=tuple(peer(p, "" if nats else f"http://{NODES[p]}:{ports[p]}", KEYS[p])
                            for p in NODES if p != name),
            )
            nodes.append(Node(name, settings, zones, ports[name]))
        for n in nodes:
            if before_start is not None:
                before_start(n)
            await n.start()
        try:
            yield nodes
        finally:
            for n in nodes:
                await n.stop()


def check(port: int) -> Check:
    return Check(kind="http", port=port, path="/health", interval=INTERVAL, timeout=0.2,
                 jitter=0.02, fall=FALL, rise=RISE)


@exchanges
async def test_one_wrong_observer_does_not_fail_a_healthy_region(backend_factory, tmp_path, exchange):
    eu = await backend_factory("127.0.0.71")
    eu.deny_from = {NODES["n2"]}  # only n2 sees 503
    zones = [make_zone([region("eu", "127.0.0.71", check=check(eu.port))])]
    async with cluster(zones, tmp_path, exchange) as nodes:
        n1, n2, n3 = nodes
        # n2's own view turns down, and it hears n1 and n3 say up
        await wait_for(lambda: n2.svc._own["eu/127.0.0.71"].state.value == "down", 5)
        await wait_for(lambda: all("1/3 observers say down" in n.svc.verdicts()["eu/127.0.0.71"].cause
                                   for n in nodes), 5)
        await asyncio.sleep(1.0)  # and it stays that way
        for n in nodes:
            assert n.up("eu") and n.up("eu/127.0.0.71"), n.svc.verdicts()["eu"]
            assert all(d["eu"].up for d in n.published)  # never published down
        cause = n2.svc.verdicts()["eu/127.0.0.71"].cause
        assert "n2 down since" in cause and "HTTP 503" in cause and "n1 up since" in cause
        assert not any(n.svc.isolated for n in nodes)


@exchanges
async def test_failover_and_recovery_timing(backend_factory, tmp_path, exchange):
    us = await backend_factory("127.0.0.72")
    port = us.port
    zones = [make_zone([region("us", "127.0.0.72", check=check(port))])]
    async with cluster(zones, tmp_path, exchange) as nodes:
        await wait_for(lambda: all(n.svc.verdicts()["us/127.0.0.72"].cause.startswith("0/3") for n in nodes), 5)
        killed = time.monotonic()
        await us.stop()
        await wait_for(lambda: not any(n.up("us") for n in nodes), 5, step=0.005)
        failover = time.monotonic() - killed
        revived = time.monotonic()
        await us.start(port)
        await wait_for(lambda: all(n.up("us") for n in nodes), 5, step=0.005)
        recovery = time.monotonic() - revived
        print(f"\nfailover: {failover:.2f}s from backend death to down on all 3 nodes "
              f"(interval {INTERVAL}s, fall {FALL}, exchange {EXCHANGE}s; bound "
              f"{FALL * INTERVAL + EXCHANGE:.2f}s + one probe timeout)")
        print(f"recovery: {recovery:.2f}s from backend start to up on all 3 nodes (rise {RISE})")
        # fall x interval + one exchange period, plus probe timeout and jitter slack
        assert failover <= FALL * INTERVAL + EXCHANGE + 0.2 + 0.4
        # the first fall after the first rise is not a flap: no hold-down
        assert recovery <= RISE * INTERVAL + EXCHANGE + 0.6


@exchanges
async def test_drain_propagates_and_survives_restart(backend_factory, tmp_path, exchange):
    eu = await backend_factory("127.0.0.73")
    zones = [make_zone([region("eu", "127.0.0.73", check=check(eu.port))])]
    async with cluster(zones, tmp_path, exchange) as nodes:
        n1, n2, n3 = nodes
        n1.svc.drain("eu", "fibre cut at the exchange")
        assert not n1.up("eu")
        took = await wait_for(lambda: all(not n.up("eu") and n.svc.verdicts()["eu"].forced for n in nodes), 3)
        assert took < 1.0
        assert "fibre cut" in n3.svc.verdicts()["eu"].cause
        # n3 restarts: the drain is back from its own disk before any exchange
        await n3.stop()
        n3b = Node("n3", n3.settings, zones, n3.port)
        nodes[2] = n3b
        assert n3b.svc.verdicts()["eu"].forced
        await n3b.start()
        # an undrain on n2 wins everywhere (last writer wins)
        n2.svc.undrain("eu")
        await wait_for(lambda: all(n.up("eu") for n in nodes), 3)


async def test_peer_with_a_key_nobody_lists_is_refused(backend_factory, tmp_path):
    eu = await backend_factory("127.0.0.74")
    eu.status = 503
    zones = [make_zone([region("eu", "127.0.0.74", check=check(eu.port))])]
    async with cluster(zones, tmp_path) as nodes:
        n1 = nodes[0]
        # It claims to be n2, and knows n1's public key, but signs with its own key.
        rogue_settings = NodeSettings(
            name="n2", private_key=keypairs("n2")["n2"], exchange_interval=EXCHANGE,
            peers=(peer("n1", f"http://{NODES['n1']}:{n1.port}", KEYS["n1"]),), source_address="127.0.0.69")
        rogue = Node("rogue", rogue_settings, zones, free_port("127.0.0.69"))
        await rogue.start()
        try:
            await wait_for(lambda: (n1.registry.get_sample_value(
                "geodns_peer_messages_rejected_total", {"reason": "bad_signature", "peer": "n2"}) or 0) >= 2, 3)
            errors = rogue.registry.get_sample_value(
                "geodns_peer_exchange_errors_total", {"peer": "n1", "reason": "refused_by_peer"})
            assert errors and errors >= 1
            assert rogue.svc.status()["peers"]["n1"]["last_error"].startswith("refused_by_peer")
        finally:
            await rogue.stop()


@exchanges
async def test_restarted_node_takes_peer_views_before_its_own_probes(backend_factory, tmp_path, exchange):
    eu = await backend_factory("127.0.0.75")
    eu.status = 503
    zones = [make_zone([region("eu", "127.0.0.75", check=check(eu.port))])]
    async with cluster(zones, tmp_path, exchange) as nodes:
        await wait_for(lambda: all(not n.up("eu") for n in nodes), 5)
        # n1's and n2's own views must have decided too (the first "down" everywhere may
        # rest on n3's view alone, n1 and n2 still undecided): only then can the peers tell
        # a restarted n3 what they saw
        await wait_for(lambda: all(n.svc.verdicts()["eu/127.0.0.75"].cause.startswith("3/3") for n in nodes), 5)
        n3 = nodes[2]
        await n3.stop()
        # forget its saved state: only the peers can tell it now
        for f in (tmp_path / "n3").iterdir():
            f.unlink()
        fresh = Node("n3", n3.settings, zones, n3.port)
        nodes[2] = fresh
        assert fresh.svc.verdicts()["eu"].up and fresh.svc.verdicts()["eu/127.0.0.75"].state is VerdictState.UNKNOWN
        await fresh.start()
        # start() did one push-pull round before publishing: the very first
        # verdicts it published hold n1's and n2's views, long before n3's own
        # view can decide (fall 3 x interval 0.2 s)
        first = fresh.published[0]
        own = fresh.svc._own["eu/127.0.0.75"]
        assert own.state.value == "unknown", own
        assert not first["eu"].up and not first["eu/127.0.0.75"].up
        cause = first["eu/127.0.0.75"].cause
        # Which peers answered that first round is a race (both, or one): a peer's view decided it.
        assert ("n1 down" in cause or "n2 down" in cause) and "n3 undecided" in cause, cause
