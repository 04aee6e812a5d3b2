"""The node side of latency measurement: settings, the signed exchange, probes over real UDP,
passive TCP samples, saved state. Real sockets on 127.0.9.x."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import aiohttp
import pytest
from aiohttp import web
from netutil import free_port

from geodns.control.latency_probe import (
    PUSH_PATH,
    LatencyService,
    LatencySettings,
    LatencySettingsError,
    load_settings,
    probe_query,
    settings_from_mapping,
)
from geodns.dns.server import Listen, SnapshotRef, start_listeners
from geodns.dns.sources import SOURCES
from geodns.health import keys
from geodns.health.peers import Rejected, Verifier, encode
from geodns.health.rtt import Hysteresis
from geodns.steer.measured import parse_network

# ---- settings --------------------------------------------------------------------------------


def test_settings_defaults_off_switch_and_errors(tmp_path):
    assert settings_from_mapping({}, "n.yaml", set()) is None
    s = settings_from_mapping({"region": "eu-west"}, "n.yaml", set())
    assert s == LatencySettings(region="eu-west") and s.enabled and s.rate == 20 and s.top == 10_000
    assert not settings_from_mapping({"region": "eu-west", "latency_probe": False}, "n.yaml", set()).enabled
    s = settings_from_mapping({"region": "eu-west", "latency_probe": {"rate": 5, "hysteresis": "15%", "top": 50,
                                                                      "peer_regions": {"nyc1": "us-east"}}}, "n.yaml", {"nyc1"})
    assert (s.rate, s.hysteresis, s.top, dict(s.peer_regions)) == (5.0, Hysteresis(15.0, 0.0), 50, {"nyc1": "us-east"})
    bad = [
        ({"latency_probe": {}}, "latency_probe: needs `region:`"),
        ({"region": 3}, "region: expected a region name"),
        ({"region": "eu", "latency_probe": {"rate": 0}}, "latency_probe.rate: expected a number"),
        ({"region": "eu", "latency_probe": {"top": 1.5}}, "latency_probe.top: expected an integer"),
        ({"region": "eu", "latency_probe": {"rates": 1}}, "latency_probe.rates: unknown setting"),
        ({"region": "eu", "latency_probe": {"enabled": "no"}}, "latency_probe.enabled: expected true or false"),
        ({"region": "eu", "latency_probe": {"hysteresis": "lots"}}, "latency_probe.hysteresis:"),
        ({"region": "eu", "latency_probe": {"timeout": 5, "interval": 1}}, "latency_probe.timeout: must not be longer"),
        ({"region": "eu", "latency_probe": {"peer_regions": {"x": "us"}}}, "'x' is not one of this node's peers"),
        ({"region": "eu", "latency_probe": {"source_address": "nowhere"}}, "latency_probe.source_address: not an IP"),
    ]
    for data, message in bad:
        with pytest.raises(LatencySettingsError, match=message.replace("(", r"\(")):
            settings_from_mapping(data, "n.yaml", set())
    path = tmp_path / "node.yaml"
    path.write_text("node: a\nregion: eu-west\nlatency_probe:\n  rate: -1\n")
    with pytest.raises(LatencySettingsError, match=r"node.yaml:4: latency_probe.rate: expected a number"):
        load_settings(str(path), set())
    path.write_text("node: a\nregion: eu-west\n")
    assert load_settings(str(path), set(), "10.0.0.1").source_address == "10.0.0.1"


# ---- the exchange ----------------------------------------------------------------------------


def _service(name: str, region: str, key, peer_keys: dict, peers: dict, **kw) -> tuple[LatencyService, list]:
    published: list = []
    settings = LatencySettings(region=region, exchange_interval=0.1, **kw)
    verifier = Verifier(name, key, {p: k.public_key() for p, k in peer_keys.items()})
    return LatencyService(settings, name, published.append, verifier, peers), published


def _message(node: str, region: str, rows: list) -> dict:
    return {"v": 1, "node": node, "region": region, "rows": rows}


def test_accept_checks_the_whole_message_and_keeps_nothing_bad():
    svc, _ = _service("a", "eu-west", keys.generate(), {}, {}, peer_regions={"b": "us-east"})
    good = [["192.0.2.7", 12.5, 1.0]]
    svc.accept("b", _message("b", "us-east", good), 1000.0)
    assert svc.peer_rows["b"].region == "us-east"
    assert svc.peer_rows["b"].rows[parse_network("192.0.2.0/24")].rtt == 12.5
    cases = [
        (_message("c", "us-east", good), "node must be the signer"),
        (_message("b", "eu-west", good), "speaks for us-east"),
        (_message("b", "us-east", [["192.0.2.0/24", 1, 0]]), "not an IP address"),
        (_message("b", "us-east", [["::ffff:192.0.2.1", 1, 0]]), "IPv4-mapped"),
        (_message("b", "us-east", [["192.0.2.1", -1, 0]]), "numbers from 0"),
        (_message("b", "us-east", [["192.0.2.1", True, 0]]), "numbers from 0"),
        (_message("b", "us-east", [["192.0.2.1", float("nan"), 0]]), "numbers from 0"),
        (_message("b", "us-east", [["192.0.2.1"]]), "expected \\[address"),
        (_message("b", "us-east", [["192.0.2.1", 1, 0], "junk"]), "expected \\[address"),
        ({"v": 2}, "expected"),
        ([], "expected"),
    ]
    for message, why in cases:
        with pytest.raises(Rejected, match=why):
            svc.accept("b", message, 1001.0)
        assert svc.peer_rows["b"].received == 1000.0  # unchanged


async def test_signed_push_pull_between_two_nodes_and_forgeries_refused():
    ka, kb, kc = keys.generate(), keys.generate(), keys.generate()
    host = "127.0.9.1"
    port_a, port_b = free_port(host), free_port("127.0.9.2")
    a, pub_a = _service("a", "eu-west", ka, {"b": kb}, {"b": f"http://127.0.9.2:{port_b}"})
    b, pub_b = _service("b", "us-east", kb, {"a": ka}, {"a": f"http://{host}:{port_a}"})
    a.sample(parse_network("203.0.113.0/24"), int.from_bytes(socket.inet_aton("203.0.113.9"), "big"), 9.0, time.time())
    b.sample(parse_network("203.0.113.0/24"), int.from_bytes(socket.inet_aton("203.0.113.9"), "big"), 90.0, time.time())
    runners = []
    for svc, addr, port in ((a, host, port_a), (b, "127.0.9.2", port_b)):
        app = web.Application()
        svc.add_routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, addr, port).start()
        runners.append(runner)
    try:
        async with aiohttp.ClientSession() as session:
            a._session = session
            await a._push("b", f"http://127.0.9.2:{port_b}")
            # Push-pull: each now holds the other's row, and ranks eu-west first for the network.
            assert b.peer_rows["a"].region == "eu-west" and a.peer_rows["b"].region == "us-east"
            a.recompute(time.time())
            assert pub_a[-1].rows[parse_network("203.0.113.0/24")] == (("eu-west", 9.0), ("us-east", 90.0))
            # A message signed by a stranger's key, or by a's key but claiming b's name, is refused.
            forger = Verifier("a", kc, {})
            body = encode(_message("a", "us-east", []))
            async with session.post(f"http://127.0.9.2:{port_b}{PUSH_PATH}", data=body, headers=forger.sign("latency", "b", body)) as resp:
                assert resp.status == 401
            liar = Verifier("a", ka, {})
            body = encode(_message("c", "us-east", []))
            async with session.post(f"http://127.0.9.2:{port_b}{PUSH_PATH}", data=body, headers=liar.sign("latency", "b", body)) as resp:
                assert resp.status == 400
            async with session.post(f"http://127.0.9.2:{port_b}{PUSH_PATH}", data=b"junk") as resp:
                assert resp.status == 401
            assert b.peer_rows["a"].region == "eu-west"  # still what a really said
            assert b.refused == {"bad_signature": 1, "malformed": 1, "unsigned": 1}
    finally:
        for runner in runners:
            await runner.cleanup()


# ---- probes, passive samples, state ---------------------------------------------------------


class _Resolver(asyncio.DatagramProtocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.seen: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.seen.append(data)
        reply = data[:2] + struct.pack("!H", 0x8005) + data[4:]  # REFUSED
        asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, reply, addr)


async def test_probe_samples_an_answer_and_backs_off_silence():
    port = free_port("127.0.9.11")
    loop = asyncio.get_running_loop()
    resolver = _Resolver(0.03)
    transport, _ = await loop.create_datagram_endpoint(lambda: resolver, local_addr=("127.0.9.11", port))
    svc, _ = _service("a", "eu-west", keys.generate(), {}, {}, port=port, timeout=0.5, interval=10.0,
                      source_address="127.0.9.10")
    try:
        answering = parse_network("127.0.9.0/24")
        await svc._probe(answering, int.from_bytes(socket.inet_aton("127.0.9.11"), "big"))
        assert 25 <= svc.own.rows[answering].rtt <= 400
        assert resolver.seen[0][2:4] == b"\x00\x00"  # RD clear: nothing to recurse for
        assert resolver.seen[0][12:] == probe_query(0, "")[12:]  # `. SOA`
        silent = parse_network("127.0.10.0/24")
        svc.schedule.sync([silent], time.monotonic())
        assert svc.schedule.next_due(time.monotonic()) == silent
        await svc._probe(silent, int.from_bytes(socket.inet_aton("127.0.10.1"), "big"))
        assert svc.counters == {"answered": 1, "unanswered": 1, "passive": 0}
        assert svc.schedule.failures(silent) == 1
        assert svc.schedule.next_due(time.monotonic() + 19.0) is None  # backed off past 2 x interval
    finally:
        transport.close()


async def test_tcp_connections_give_passive_samples(tmp_path):
    from geodns.control.controller import Controller

    controller = Controller("zones", "data/geoip-bundle.mmdb")
    ref = SnapshotRef(controller.start())
    host = "127.0.9.21"
    port = free_port(host)
    SOURCES.take()
    SOURCES.enabled = True
    closers = await start_listeners(ref, [Listen(host, port)], udp=False)
    try:
        query = probe_query(7, "gslb.example.test")
        reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.9.22", 0))
        writer.write(struct.pack("!H", len(query)) + query)
        head = await reader.readexactly(2)
        await reader.readexactly(struct.unpack("!H", head)[0])
        writer.close()
        for _ in range(50):
            if SOURCES.rtts:
                break
            await asyncio.sleep(0.02)
        counts, rtts = SOURCES.take()
        assert counts == {socket.inet_aton("127.0.9.22"): 1}
        assert 0 < rtts[socket.inet_aton("127.0.9.22")] < 100  # ms, loopback
        svc, _ = _service("a", "eu-west", keys.generate(), {}, {})
        SOURCES.merge(counts, rtts)
        svc.take_sources(time.time())
        assert parse_network("127.0.9.0/24") in svc.top and svc.counters["passive"] == 1
    finally:
        SOURCES.enabled = False
        for close in closers:
            close()


def test_state_survives_a_restart_and_expires(tmp_path):
    svc, _ = _service("a", "eu-west", keys.generate(), {"b": keys.generate()}, {"b": "http://127.0.9.3:1"}, expiry=100.0)
    svc.state_path = str(tmp_path / "latency.json")
    now = time.time()
    net = parse_network("198.51.100.0/24")
    svc.sample(net, int.from_bytes(socket.inet_aton("198.51.100.5"), "big"), 20.0, now)
    svc.accept("b", _message("b", "us-east", [["198.51.100.5", 80.0, 0.0]]), now)
    svc.save()
    again, published = _service("a", "eu-west", keys.generate(), {"b": keys.generate()}, {"b": "http://127.0.9.3:1"}, expiry=100.0)
    again.state_path = svc.state_path
    again.load()
    assert published[-1].rows[net] == (("eu-west", 20.0), ("us-east", 80.0))
    # Saved long ago: expired on load.
    doc = json.loads((tmp_path / "latency.json").read_text())
    doc["saved_at"] -= 1000
    (tmp_path / "latency.json").write_text(json.dumps(doc))
    old, published = _service("a", "eu-west", keys.generate(), {"b": keys.generate()}, {"b": "http://127.0.9.3:1"}, expiry=100.0)
    old.state_path = svc.state_path
    old.load()
    assert not old.own.rows and not old.peer_rows and published == []
    (tmp_path / "latency.json").write_text("{not json")
    old.load()  # logged and ignored


def test_ranking_is_handed_on_when_a_leader_moves_and_figures_wait():
    from geodns.control import latency_probe

    svc, published = _service("a", "eu-west", keys.generate(), {}, {}, hysteresis=Hysteresis(10.0, 5.0))
    net = parse_network("198.51.100.0/24")
    addr = int.from_bytes(socket.inet_aton("198.51.100.5"), "big")
    now = 1_000_000.0
    svc.sample(net, addr, 50.0, now)
    svc.accept("b", _message("b", "us-east", [["198.51.100.5", 60.0, 0.0]]), now)
    svc.recompute(now)
    assert [r for r, _ in published[-1].rows[net]] == ["eu-west", "us-east"] and len(published) == 1
    svc.accept("b", _message("b", "us-east", [["198.51.100.5", 47.0, 0.0]]), now + 1)  # 3 ms faster: held
    svc.recompute(now + 1)
    assert len(published) == 1
    svc.recompute(now + 1 + latency_probe.PUBLISH_EVERY)  # the new figures, same leader
    assert len(published) == 2 and published[-1].rows[net] == (("eu-west", 50.0), ("us-east", 47.0))
    svc.accept("b", _message("b", "us-east", [["198.51.100.5", 20.0, 0.0]]), now + 40)  # beyond the margin
    svc.recompute(now + 40)
    assert len(published) == 3 and published[-1].rows[net][0] == ("us-east", 20.0)


def test_expired_rows_leave_the_ranking_and_a_sweep_reranks_everything():
    svc, published = _service("a", "eu-west", keys.generate(), {}, {}, expiry=100.0)
    now = 1_000_000.0
    nets = [parse_network(f"198.51.{i}.0/24") for i in range(3)]
    for i, net in enumerate(nets):
        svc.sample(net, (net << 8) | 5, 10.0 + i, now if i else now - 90)  # the first is older
    svc.recompute(now)
    assert set(published[-1].rows) == set(nets)
    svc.recompute(now + 30)  # expiry is due once a minute only
    assert len(published) == 1
    svc.recompute(now + 61)  # the first network's row is 151 s old: gone
    assert set(published[-1].rows) == set(nets[1:])
    assert not svc._sweep  # 2 networks: one slice re-ranked them all
    svc.recompute(now + 200)
    assert published[-1] is None  # nothing fresh is left: the table decides again
