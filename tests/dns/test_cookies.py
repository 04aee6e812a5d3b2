"""DNS cookies: the RFC 9018 server cookie, its lifetime rules, both parsers, the patch in C and
Python, and `answer()` with cookies (bytes in, bytes out; the server over sockets is in
tests/integration/test_cookies.py)."""

from __future__ import annotations

import dataclasses
import socket
import struct
import time
from pathlib import Path

import pytest

from geodns.control.controller import Controller
from geodns.dns import cookies
from geodns.dns.answer import answer
from geodns.dns.cache import AnswerCache
from geodns.dns.cookies import CookieSecrets, packed_address, reply, server_cookie
from geodns.dns.stats import Stats
from geodns.dns.wire import FormErr, parse_query, parse_query_full, patch_python, scan_common

try:
    from geodns.dns._scan import patch as c_patch
    from geodns.dns._scan import scan as c_scan
except ImportError:
    c_scan = c_patch = None

REPO = Path(__file__).resolve().parents[2]
SECRET = bytes.fromhex("e5e973e5a6b2a43f48e7dc849e37bfcf")
KEYS = CookieSecrets(SECRET)
A1_CLIENT = bytes.fromhex("2464c4abcf10c957")
A1_ADDRESS = packed_address("198.51.100.100")
A1_ISSUED = 1559731985
A1_COOKIE = bytes.fromhex("2464c4abcf10c957010000005cf79f111f8130c3eee29480")


def test_siphash_is_siphash_2_4():
    """The reference vector of the SipHash paper (key 00..0f, message 00..0e), as the hash's
    little-endian bytes: the library's byte order is the one RFC 9018 means."""
    from siphashc import siphash

    out = siphash(bytes(range(16)), bytes(range(15))).to_bytes(8, "little")
    assert out.hex() == "e545be4961ca29a1"


def test_rfc9018_appendix_a():
    # A.1: a new server cookie
    assert reply(KEYS, A1_CLIENT, A1_ADDRESS, A1_ISSUED) == (A1_COOKIE, False)
    # A.2: the same client 40 minutes later: valid, older than half an hour, so renewed
    assert reply(KEYS, A1_COOKIE, A1_ADDRESS, 1559734385) == (
        bytes.fromhex("2464c4abcf10c957010000005cf7a871d4a564a1442aca77"), True)
    # A.3: reserved bytes set: valid when it was fresh (the hash covers them as sent) ...
    a3 = bytes.fromhex("fc93fc62807ddb8601abcdef5cf78f71a314227b6679ebf5")
    a3_address = packed_address("203.0.113.203")
    assert reply(KEYS, a3, a3_address, 1559727985 + 60) == (a3, True)
    # ... and answered with a fresh one (reserved zero) past its hour, as in the RFC's reply
    assert reply(KEYS, a3, a3_address, 1559734700) == (
        bytes.fromhex("fc93fc62807ddb86010000005cf7a9acf73a7810aca2381e"), False)
    # A.4: IPv6, made with the previous secret: valid, answered with the new secret
    rolled = CookieSecrets(bytes.fromhex("445536bcd2513298075a5d379663c962"),
                           bytes.fromhex("dd3bdf9344b678b185a6f5cb60fca715"))
    a4 = bytes.fromhex("22681ab97d52c298010000005cf7c57926556bd0934c72f8")
    assert reply(rolled, a4, packed_address("2001:db8:220:1:59de:d0f4:8769:82b8"), 1559741961) == (
        bytes.fromhex("22681ab97d52c298010000005cf7c609a6bb79d16625507a"), True)


@pytest.mark.parametrize(
    ("offset", "valid", "echoed"),
    [
        (0, True, True),
        (1799, True, True),          # younger than half an hour: echoed as it came
        (1800, True, False),         # half an hour: valid, replaced by a fresh one
        (3600, True, False),         # an hour: still valid
        (3601, False, False),        # past an hour: a new cookie, as for a stranger
        (-300, True, True),          # five minutes in the future (another node's clock)
        (-301, False, False),
    ],
)
def test_lifetime(offset, valid, echoed):
    out, ok = reply(KEYS, A1_COOKIE, A1_ADDRESS, A1_ISSUED + offset)
    assert ok is valid
    assert (out == A1_COOKIE) is echoed
    assert out[:8] == A1_CLIENT and len(out) == 24
    if not echoed:
        assert out[8:] == server_cookie(SECRET, A1_CLIENT, A1_ADDRESS, A1_ISSUED + offset)


def test_serial_arithmetic_across_the_wrap():
    issued = 0xFFFFFF00
    fresh, _ = reply(KEYS, A1_CLIENT, A1_ADDRESS, issued)
    assert reply(KEYS, fresh, A1_ADDRESS, issued + 512) == (fresh, True)  # the clock wrapped
    assert reply(KEYS, fresh, A1_ADDRESS, issued + 3601)[1] is False


@pytest.mark.parametrize(
    "cookie",
    [
        A1_COOKIE[:8] + b"\x02" + A1_COOKIE[9:],            # another version
        A1_COOKIE[:-1] + bytes([A1_COOKIE[-1] ^ 1]),         # another hash
        bytes([A1_COOKIE[0] ^ 1]) + A1_COOKIE[1:],           # another client cookie
        A1_COOKIE[:16],                                      # 8 bytes of server cookie: not ours
        A1_COOKIE + bytes(8),                                # 24 bytes of server cookie: not ours
    ],
)
def test_anything_else_is_answered_with_a_new_cookie(cookie):
    out, ok = reply(KEYS, cookie, A1_ADDRESS, A1_ISSUED)
    assert not ok
    assert out == cookie[:8] + server_cookie(SECRET, cookie[:8], A1_ADDRESS, A1_ISSUED)


def test_a_cookie_is_bound_to_the_address_and_the_secret():
    assert not reply(KEYS, A1_COOKIE, packed_address("198.51.100.101"), A1_ISSUED)[1]
    assert not reply(CookieSecrets(bytes(16)), A1_COOKIE, A1_ADDRESS, A1_ISSUED)[1]
    assert reply(KEYS, A1_COOKIE, packed_address("::ffff:198.51.100.100"), A1_ISSUED)[1]


def test_secrets_are_128_bits():
    with pytest.raises(ValueError):
        CookieSecrets(bytes(15))
    assert cookies.parse_secret("0xE5E973E5A6B2A43F48E7DC849E37BFCF") == SECRET
    for bad in ("e5e973", "zz" * 16, SECRET.hex() + "00"):
        with pytest.raises(ValueError, match="32 hex digits"):
            cookies.parse_secret(bad)


# ------------------------------------------------------------------ wire


def name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def query(qid: int = 7, options: bytes = b"", qname: str = "www.gslb.example.test", qtype: int = 1,
          flags: int = 0) -> bytes:
    return (struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1) + name(qname) + struct.pack("!HH", qtype, 1)
            + b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(options)) + options)


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


ECS = option(8, struct.pack("!HBB", 1, 24, 0) + bytes([81, 2, 69]))


@pytest.mark.parametrize("length", [8, 16, 24, 40])
@pytest.mark.parametrize("with_ecs", ["none", "before", "after"])
def test_parsers_agree_on_cookies(length, with_ecs):
    cookie = option(10, bytes(range(1, length + 1)))
    opts = {"none": cookie, "before": ECS + cookie, "after": cookie + ECS}[with_ecs]
    data = query(options=opts)
    full = parse_query_full(data)
    assert full.edns.cookie == bytes(range(1, length + 1))
    assert (full.edns.ecs is not None) is (with_ecs != "none")
    assert scan_common(data) == full  # the common shape: the fast path keeps it
    if c_scan is not None:
        assert c_scan(data) == full


@pytest.mark.parametrize("length", [0, 1, 7, 9, 15, 41, 60])
def test_a_malformed_cookie_is_formerr(length):
    data = query(options=option(10, bytes(length)))
    assert scan_common(data) is None
    if c_scan is not None:
        assert c_scan(data) is None
    with pytest.raises(FormErr, match="COOKIE"):
        parse_query(data)
    response = answer(fresh_snapshot(), data, "192.0.2.1", time.time(), True, Stats())
    assert response[3] & 0xF == 1  # FORMERR, with our OPT and no cookie
    assert response[-11:-8] == b"\0\0\x29" and response[-2:] == b"\0\0"


def test_two_cookies_are_formerr():
    data = query(options=option(10, bytes(8)) + option(10, bytes(8)))
    assert scan_common(data) is None
    with pytest.raises(FormErr, match="more than one COOKIE"):
        parse_query(data)


def test_c_patch_gives_the_python_bytes_with_a_cookie():
    if c_patch is None:
        pytest.skip("geodns.dns._scan is not built")
    snap = fresh_snapshot()
    body = snap_body(snap)
    for opts in (option(10, bytes(8)), ECS + option(10, bytes(24))):
        q = parse_query(query(options=opts))
        for cookie in (None, bytes(range(24)), bytes(range(40))):
            for scope in (None, 0, 24):
                for udp in (True, False):
                    assert c_patch(body, q, scope, udp, cookie) == patch_python(body, q, scope, udp, cookie)
                    assert c_patch(body, q, scope, udp) == patch_python(body, q, scope, udp)
    with pytest.raises(TypeError):
        c_patch(body, q, None, True, bytes(41))


def test_a_tcp_answer_past_65535_bytes_is_truncated():
    snap = fresh_snapshot()
    body = snap_body(snap)
    huge = body + bytes(70_000)
    q = parse_query(query())
    for patcher in filter(None, (patch_python, c_patch)):
        out = patcher(huge, q, None, False)
        assert out[2] & 0x02 and len(out) < 100  # TC, the question and our OPT
        assert patcher(body + bytes(60_000), q, None, False)[2] & 0x02 == 0  # fits: whole


# ------------------------------------------------------------------ answer()


_controller: list[Controller] = []


def fresh_snapshot():
    if not _controller:
        c = Controller(str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb"))
        c.start()
        _controller.append(c)
    return dataclasses.replace(_controller[0].snapshot, cache=AnswerCache())


def snap_body(snap) -> bytes:
    """A prepared body of the example zone (www's steered A answer)."""
    answer(snap, query(), "192.0.2.1", time.time(), True, Stats())
    entry = next(iter(snap.cache.places.values()))
    return entry.bodies[0]


def response_cookie(response: bytes) -> bytes | None:
    from dns.message import from_wire

    msg = from_wire(response)
    for opt in msg.options:
        if opt.otype == 10:
            return opt.to_wire()
    return None


@pytest.fixture
def known_secret():
    before = cookies.active()
    cookies.configure(KEYS)
    yield
    cookies.configure(before)


@pytest.mark.parametrize("qname", ["www.gslb.example.test", "gslb.example.test", "nothere.gslb.example.test",
                                   "other.zone.test"])
def test_every_answer_to_a_client_cookie_carries_a_server_cookie(known_secret, qname):
    """Steered (level 2), static (level 1), NXDOMAIN and REFUSED answers alike; the rest of the
    answer is what the query without a cookie gets."""
    snap = fresh_snapshot()
    client_cookie = bytes(range(8))
    plain = answer(snap, query(qname=qname, options=ECS), "198.51.100.7", time.time(), True, Stats())
    for _ in range(3):  # a miss, then hits of every cache level
        with_cookie = answer(snap, query(qname=qname, options=ECS + option(10, client_cookie)), "198.51.100.7", time.time(),
                             True, Stats())
        got = response_cookie(with_cookie)
        assert got is not None and got[:8] == client_cookie and len(got) == 24
        assert reply(KEYS, got, packed_address("198.51.100.7"), int(time.time()))[1], "not a valid cookie of ours"
        assert same_message(with_cookie, plain)


def same_message(a: bytes, b: bytes) -> bool:
    """The same answer apart from the COOKIE option."""
    from dns.message import from_wire

    ma, mb = from_wire(a), from_wire(b)
    return (ma.id, ma.flags, ma.rcode(), ma.question, ma.answer, ma.authority, ma.additional,
            [o for o in ma.options if o.otype != 10]) == (
            mb.id, mb.flags, mb.rcode(), mb.question, mb.answer, mb.authority, mb.additional, list(mb.options))


def test_a_new_cookie_never_enters_level0(known_secret):
    snap = fresh_snapshot()
    data = query(options=option(10, bytes(8)))
    for _ in range(3):
        first = answer(snap, data, "198.51.100.7", time.time(), True, Stats())
        second = answer(snap, data, "198.51.100.8", time.time(), True, Stats())
    assert not snap.cache.packets
    assert response_cookie(first) != response_cookie(second)  # per client address


def test_an_echoed_cookie_is_served_from_level0_to_its_client_only(known_secret):
    snap = fresh_snapshot()
    client = bytes(range(8))
    now = int(time.time())
    mine = client + server_cookie(SECRET, client, packed_address("198.51.100.7"), now - 60)
    data = query(options=ECS + option(10, mine))
    responses = [answer(snap, data, "198.51.100.7", time.time(), True, Stats()) for _ in range(3)]
    assert len(snap.cache.packets) == 1, "admitted on its second sighting"
    (entry,) = snap.cache.packets.values()
    assert entry[3] == "198.51.100.7" and entry[1] is not None
    assert 1700 < entry[1] - time.time() <= 1740, "until the cookie is half an hour old"
    assert responses[0] == responses[1] == responses[2] and response_cookie(responses[2]) == mine
    # The same bytes from another address: not this entry; a new cookie for that address.
    other = answer(snap, data, "198.51.100.8", time.time(), True, Stats())
    got = response_cookie(other)
    assert got != mine and reply(KEYS, got, packed_address("198.51.100.8"), int(time.time()))[1]
    # A cookie due for renewal soon: the entry lives only until then.
    old = client + server_cookie(SECRET, client, packed_address("198.51.100.9"), now - 1795)
    data = query(options=ECS + option(10, old))
    for _ in range(2):
        answer(snap, data, "198.51.100.9", time.time(), True, Stats())
    assert snap.cache.packets[data[2:]][1] - time.time() <= 5


def test_valid_server_cookie_for_rate_limiting(known_secret):
    snap = fresh_snapshot()
    got = response_cookie(answer(snap, query(options=option(10, bytes(8))), "198.51.100.7", time.time(), True, Stats()))
    assert cookies.valid_server_cookie(query(options=option(10, got)), "198.51.100.7", time.time())
    assert cookies.valid_server_cookie(query(options=option(10, got)), packed_address("198.51.100.7"), time.time())
    assert cookies.valid_server_cookie(query(options=option(10, got)), socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.7"), time.time())
    assert not cookies.valid_server_cookie(query(options=option(10, got)), "198.51.100.8", time.time())
    assert not cookies.valid_server_cookie(query(options=option(10, bytes(8))), "198.51.100.7", time.time())
    assert not cookies.valid_server_cookie(query(), "198.51.100.7", time.time())
    assert not cookies.valid_server_cookie(b"\0junk", "198.51.100.7", time.time())
    stale = A1_CLIENT + server_cookie(SECRET, A1_CLIENT, packed_address("198.51.100.7"), int(time.time()) - 4000)
    assert not cookies.valid_server_cookie(query(options=option(10, stale)), "198.51.100.7", time.time())


def test_notimp_for_other_opcodes_echoes_no_rd_or_cd():
    snap = fresh_snapshot()
    for opcode in (1, 2, 4, 5, 15):
        flags = opcode << 11 | 0x0100 | 0x0010  # RD and CD set
        response = answer(snap, query(flags=flags), "192.0.2.1", time.time(), True, Stats())
        (rflags,) = struct.unpack_from("!H", response, 2)
        assert rflags & 0xF == 4, opcode  # NOTIMP
        assert (rflags >> 11) & 0xF == opcode and rflags & 0x8000
        assert not rflags & 0x0100 and not rflags & 0x0010
    # A QUERY keeps its RD and CD
    response = answer(snap, query(flags=0x0110), "192.0.2.1", time.time(), True, Stats())
    assert struct.unpack_from("!H", response, 2)[0] & 0x0110 == 0x0110


def test_notimp_is_decided_by_the_full_parser_for_both_scanners():
    """Neither scanner takes a message with an opcode (C and Python alike return None), so the
    full parser names it NotImp, and `error_response` drops RD and CD for it."""
    from geodns.dns.wire import NotImp, error_response

    for opcode in (1, 2, 4, 5, 15):
        data = query(flags=opcode << 11 | 0x0110)
        assert scan_common(data) is None
        if c_scan is not None:
            assert c_scan(data) is None
        with pytest.raises(NotImp) as caught:
            parse_query_full(data)
        (flags,) = struct.unpack_from("!H", error_response(caught.value), 2)
        assert flags & 0xF == 4 and (flags >> 11) & 0xF == opcode and not flags & 0x0110
