"""The hot path agrees with the general path: fast parser vs full parser,
integer narrowing vs `snapshot.narrow`, level-0 (exact query) hits vs fresh
answers, and answers never cross clients."""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
import time
from pathlib import Path

import pytest

from geodns.control.controller import Controller
from geodns.dns.answer import answer, narrow_int
from geodns.dns.cache import AnswerCache
from geodns.dns.resolve import prepare, resolve
from geodns.dns.snapshot import Snapshot, narrow
from geodns.dns.stats import Stats
from geodns.dns.wire import (
    Ignore,
    WireError,
    parse_query,
    parse_query_full,
    patch_python,
    scan_common,
)
from geodns.steer import Client

try:
    from geodns.dns._scan import scan as c_scan
except ImportError:  # the extension is optional; the Python scan is then the only one
    c_scan = None

REPO = Path(__file__).resolve().parents[2]


def name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def query(qid: int, qname: str = "www.gslb.example.test", qtype: int = 1, ecs: tuple[str, int] | None = None,
          edns: bool = True, flags: int = 0, payload: int = 1232) -> bytes:
    head = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    body = name(qname) + struct.pack("!HH", qtype, 1)
    if not edns:
        return head + body
    opt = b""
    if ecs is not None:
        address = ipaddress.ip_address(ecs[0])
        family = 1 if address.version == 4 else 2
        data = struct.pack("!HBB", family, ecs[1], 0) + address.packed[: (ecs[1] + 7) // 8]
        opt = struct.pack("!HH", 8, len(data)) + data
    return head + body + b"\0" + struct.pack("!HHIH", 41, payload, 0, len(opt)) + opt


def with_cookie(data: bytes, cookie: bytes) -> bytes:
    """`data` (a query ending in its OPT record) with a COOKIE option appended."""
    opt_at = data.rindex(b"\0\0\x29")
    rdlen = struct.unpack_from("!H", data, opt_at + 9)[0]
    option = struct.pack("!HH", 10, len(cookie)) + cookie
    return data[: opt_at + 9] + struct.pack("!H", rdlen + len(option)) + data[opt_at + 11 :] + option


def parsed(parser, data: bytes):
    try:
        return parser(data)
    except (Ignore, WireError) as exc:
        return type(exc), str(exc)


def fresh(controller: Controller) -> Snapshot:
    """The current snapshot with an empty answer cache (publish() may keep the cache)."""
    return dataclasses.replace(controller.snapshot, cache=AnswerCache())


@pytest.fixture(scope="module")
def controller() -> Controller:
    c = Controller(str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb"))
    c.start()
    return c


def test_fast_parser_agrees_with_the_full_one_on_mutations():
    rng = random.Random(7)
    seeds = [
        query(1, ecs=("81.2.69.0", 24)),
        query(2, ecs=("2001:db8:1200::", 40), qtype=28),
        query(3, ecs=("10.1.2.128", 25)),
        query(4, ecs=("0.0.0.0", 0)),
        query(5, edns=False),
        query(6),
        query(7, qname="WwW.GsLb.ExAmPlE.TeSt", flags=0x0110),
        with_cookie(query(8), bytes(range(8))),
        with_cookie(query(9, ecs=("81.2.69.0", 24)), bytes(range(24))),
    ]
    for data in seeds:
        assert parse_query(data) == parse_query_full(data)
        assert scan_common(data) == parse_query_full(data)  # all of them are the common shape
        if c_scan is not None:
            assert c_scan(data) == parse_query_full(data)
    for _ in range(30_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            what = rng.random()
            if what < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif what < 0.8 and data:
                del data[rng.randrange(len(data)) :]
            else:
                data += bytes([rng.randrange(256)])
        data = bytes(data)
        if not data:
            continue
        assert parsed(parse_query, data) == parsed(parse_query_full, data), data.hex()
        common = scan_common(data)
        if c_scan is not None:
            assert c_scan(data) == common, data.hex()
        if common is not None:
            assert common == parse_query_full(data), data.hex()


def test_c_scan_reads_odd_but_common_queries_like_python():
    """Edges of the common shape: /0 and /32 and /128 sources, trailing-bit rules, payloads under
    512, the DO bit, a 255-byte name, and a name one byte too long."""
    if c_scan is None:
        pytest.skip("geodns.dns._scan is not built")
    long_name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: 255 bytes on the wire
    cases = [
        query(1, ecs=("81.2.69.7", 32)),
        query(2, ecs=("2001:db8::1", 128), qtype=28),
        query(3, ecs=("2001:db8::", 0), qtype=28),
        query(4, ecs=("10.0.0.0", 7)),
        query(5, payload=100),
        query(6, qname=long_name),
        query(7, qname=long_name + "x"),
        query(8, ecs=("81.2.69.0", 24))[:-1],
        query(9, ecs=("81.2.69.0", 24)) + b"\0",
    ]
    do = bytearray(query(10, ecs=("81.2.69.0", 24)))
    do[len(do) - 15] |= 0x80  # the DO bit: the third byte of the OPT TTL, before RDLEN and the 11-byte option
    cases.append(bytes(do))
    for data in cases:
        assert c_scan(data) == scan_common(data), data.hex()
        assert parsed(parse_query, data) == parsed(parse_query_full, data), data.hex()


def test_integer_narrowing_follows_the_rule(controller):
    snap = controller.snapshot
    czone = snap.zones["gslb.example.test"]
    rng = random.Random(3)
    nets = [n for v in (4, 6) for n in czone.narrowing[v]]
    assert nets, "the example zone has CIDR rules and a latency table"
    for _ in range(20_000):
        if rng.random() < 0.5 and nets:
            base = rng.choice(nets)
            value = int(base.network_address) ^ rng.getrandbits(base.max_prefixlen - max(0, base.prefixlen - 3))
            address = ipaddress.ip_address(value) if base.version == 4 else ipaddress.IPv6Address(value)
        elif rng.random() < 0.5:
            address = ipaddress.IPv4Address(rng.getrandbits(32))
        else:
            address = ipaddress.IPv6Address(rng.getrandbits(128))
        prefix = rng.randint(0, address.max_prefixlen)
        ints = czone.narrowing_ints[address.version]
        expected = _narrow_by_definition(address, prefix, czone.narrowing[address.version])
        assert narrow_int(int(address), address.max_prefixlen, prefix, ints) == expected, (address, prefix)
        assert narrow(address, prefix, czone.narrowing[address.version]) == expected


def _narrow_by_definition(address, prefix, cidrs):
    """The rule, spelled out slowly: the shortest prefix (at least the GeoIP one) whose network is
    wholly inside or wholly outside every CIDR; `inside` when the address is in one of them."""
    inside = any(address in cidr for cidr in cidrs)
    for length in range(prefix, address.max_prefixlen + 1):
        network = ipaddress.ip_network((address, length), strict=False)
        if all(network.subnet_of(c) or not network.overlaps(c) for c in cidrs):
            return length, inside
    return address.max_prefixlen, inside


CLIENTS = [("81.2.69.0", 24), ("8.8.8.0", 24), ("1.0.16.0", 24), ("2001:db8::", 32), ("198.51.100.0", 24),
           ("89.160.20.128", 25), ("175.16.199.0", 24), ("0.0.0.0", 0)]


@pytest.mark.parametrize("qname", ["www.gslb.example.test", "geo.gslb.example.test", "gslb.example.test",
                                   "nope.gslb.example.test", "WWW.gslb.example.test"])
@pytest.mark.parametrize("qtype", [1, 28, 16, 255])
def test_level0_hits_equal_fresh_answers(controller, qname, qtype):
    """Each query answered by a fresh snapshot (no cache) equals its repeats: the second is
    admitted to level 0, the third is a level-0 hit."""
    for client in CLIENTS:
        for source in ("127.0.0.1", "81.2.69.160"):
            data = query(0x1234, qname, qtype, ecs=client)
            snap = fresh(controller)
            first = answer(snap, data, source, time.time(), True, Stats())
            assert not snap.cache.packets  # seen once: not admitted
            answers = [answer(snap, query(0x4321, qname, qtype, ecs=client), source, time.time(), True, Stats()) for _ in range(2)]
            for again in answers:
                assert again[:2] == b"\x43\x21"
                assert first[2:] == again[2:]
            entry = snap.cache.packets.get(data[2:])
            if entry is not None:  # admitted (answers that depend on the source never are)
                assert entry[0] == first[2:]
                assert answer(snap, data, source, time.time(), True, Stats())[2:] == first[2:]


def test_level0_admits_on_the_second_sighting(controller):
    snap = fresh(controller)
    data = query(7, ecs=("81.2.69.0", 24))
    first = answer(snap, data, "127.0.0.1", time.time(), True, Stats())
    assert not snap.cache.packets
    answer(snap, data, "127.0.0.1", time.time(), True, Stats())
    assert list(snap.cache.packets) == [data[2:]]
    assert snap.cache.packets[data[2:]][0] == first[2:]
    other = query(7, ecs=("8.8.8.0", 24))
    answer(snap, other, "127.0.0.1", time.time(), True, Stats())
    assert len(snap.cache.packets) == 1


def test_level0_does_not_cross_source_addresses(controller):
    """Without ECS the source address decides: it is not a level-0 key, so nothing is shared."""
    snap = fresh(controller)
    data = query(1, edns=False)
    london = answer(snap, data, "81.2.69.160", time.time(), True, Stats())
    loopback = answer(snap, data, "127.0.0.1", time.time(), True, Stats())
    assert london != loopback  # eu-west vs the default, us-east
    assert london == answer(fresh(controller), data, "81.2.69.160", time.time(), True, Stats())
    assert not snap.cache.packets


def test_packet_cache_off_gives_the_same_bytes(controller):
    queries = [query(i, ecs=c, qtype=t) for i, (c, t) in enumerate((c, t) for c in CLIENTS for t in (1, 28))]
    on = fresh(controller)
    with_cache = [answer(on, q, "127.0.0.1", time.time(), True, Stats()) for q in queries * 2]
    off = dataclasses.replace(controller.snapshot, cache=AnswerCache(level0=False))
    without = [answer(off, q, "127.0.0.1", time.time(), True, Stats()) for q in queries * 2]
    assert with_cache == without
    assert not off.cache.packets


def test_level0_counts_answers_like_the_general_path(controller):
    snap = fresh(controller)
    stats = Stats()
    data = query(9, ecs=("81.2.69.0", 24))
    for _ in range(3):
        answer(snap, data, "127.0.0.1", time.time(), True, stats)
    assert sum(stats.totals().values()) == 3
    (label, qtype, udp), n = next(iter(stats.totals().items()))
    assert (label.regions, qtype, udp, n) == ("eu-west", 1, True, 3)


def test_tcp_never_uses_level0(controller):
    snap = fresh(controller)
    data = query(9, ecs=("81.2.69.0", 24), payload=512)
    answer(snap, data, "127.0.0.1", time.time(), False, Stats())
    assert not snap.cache.packets


def test_c_patch_gives_the_python_bytes(controller):
    """Every prepared body of the example zone, patched for queries with and without EDNS,
    IPv4/IPv6 ECS of several lengths, DO, small payloads (truncation), both transports."""
    if c_scan is None:
        pytest.skip("geodns.dns._scan is not built")
    from geodns.dns._scan import patch as c_patch

    snap = fresh(controller)
    bodies = []
    qname = "www.gslb.example.test"  # the queries' name: a body's question is the query's
    czone = snap.find_zone(qname)
    for qtype in (1, 28, 16, 15, 2, 6, 255):  # steered answers, NODATA with the SOA, ANY
        res = resolve(snap, czone, qname, qtype, lambda: Client(None, None, None), time.time())
        bodies.extend(prepare(res, name(qname), qtype, 1, czone.zone.origin).bodies)
    bodies.append(bodies[0] + bytes(600))  # over 512 bytes: the truncated form (TC) for UDP
    queries = [
        query(0xBEEF, "WWW.gslb.Example.test", qtype, ecs=ecs, edns=edns, flags=flags, payload=payload)
        for qtype in (1, 28)
        for ecs in (None, ("81.2.69.0", 24), ("81.2.69.7", 32), ("10.0.0.0", 7), ("0.0.0.0", 0),
                    ("2001:db8:1200::", 40), ("2001:db8::1", 128))
        for edns in (True, False)
        for flags in (0, 0x0110)
        for payload in (512, 1232, 65535)
        if edns or ecs is None
    ]
    checked = 0
    for body in bodies:
        for data in queries:
            q = parse_query(data)
            for scope in (None, 0, 24):
                for udp in (True, False):
                    assert c_patch(body, q, scope, udp) == patch_python(body, q, scope, udp), (body, data)
                    checked += 1
    assert checked > 1000
    truncated = c_patch(bodies[-1], parse_query(query(1, edns=False)), None, True)
    assert truncated[2] & 0x02 and truncated == patch_python(bodies[-1], parse_query(query(1, edns=False)), None, True)
    do = bytearray(query(10, ecs=("81.2.69.0", 24)))
    do[len(do) - 15] |= 0x80
    q = parse_query(bytes(do))
    assert q.edns.do
    assert c_patch(bodies[0], q, 24, True) == patch_python(bodies[0], q, 24, True)


def test_a_steered_name_is_narrowed_by_its_own_rules_only(controller):
    """www (geo_proximity) has no CIDR of its own; geo has the partner /24; fast has the latency
    table's prefixes; the zone's list is all of them, for CNAMEs and other types."""
    from geodns.dns.answer import narrowing, narrowing_of

    snap = controller.snapshot
    czone = snap.find_zone("gslb.example.test")
    for key, node in czone.zone.nodes.items():
        assert key == node.name  # narrowing_by_node is keyed by what a Node calls itself
    www, geo, fast = (czone.nodes[f"{n}.gslb.example.test"] for n in ("www", "geo", "fast"))
    assert narrowing(czone, www) == {4: (), 6: ()}
    assert narrowing(czone, geo)[4] == ((int(ipaddress.ip_address("198.51.100.0")), 24),)
    assert (int(ipaddress.ip_address("81.2.69.0")), 24) in narrowing(czone, fast)[4]
    zone_wide = set(czone.narrowing_ints[4])
    assert set(narrowing(czone, geo)[4]) | set(narrowing(czone, fast)[4]) == zone_wide
    assert narrowing_of(snap, czone, "www.gslb.example.test", 1, time.time()) == {4: (), 6: ()}
    assert narrowing_of(snap, czone, "www.gslb.example.test", 16, time.time()) is czone.narrowing_ints  # not steered for TXT
