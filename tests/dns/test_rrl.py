"""Response rate limiting as a pure function: the class and name of real answers, the token
bucket over simulated time, slip, exemptions, log-only, the bounded table, the settings."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest

from geodns.control.controller import Controller
from geodns.dns.answer import answer
from geodns.dns.rrl import (
    SLOT_SIZE,
    Action,
    Limiter,
    ResponseClass,
    RRLSettings,
    RRLSettingsError,
    Table,
    classify,
    settings_from_mapping,
    slip_response,
    unit_name,
)

REPO = Path(__file__).resolve().parents[2]


def wire_name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split("."))


def query(qname: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 0, 0)
    return head + wire_name(qname) + b"\0" + struct.pack("!HH", qtype, 1) + opt


@pytest.fixture(scope="module")
def snap():
    c = Controller(str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb"))
    return c.start()


@pytest.mark.parametrize(
    ("qname", "qtype", "cls", "unit"),
    [
        ("www.gslb.example.test", 1, ResponseClass.ANSWER, "www.gslb.example.test"),
        ("big.GSLB.example.test", 16, ResponseClass.ANSWER, "big.gslb.example.test"),
        ("mail.gslb.example.test", 16, ResponseClass.NODATA, "mail.gslb.example.test"),
        # A random-subdomain flood is one unit: the zone, not each name.
        ("nope-1234.gslb.example.test", 1, ResponseClass.NXDOMAIN, "gslb.example.test"),
        ("x.y.gslb.example.test", 1, ResponseClass.NXDOMAIN, "gslb.example.test"),
        ("host.legacy.gslb.example.test", 1, ResponseClass.REFERRAL, "legacy.gslb.example.test"),
        ("legacy.gslb.example.test", 1, ResponseClass.REFERRAL, "legacy.gslb.example.test"),
        ("www.not-ours.test", 1, ResponseClass.ERROR, ""),
    ],
)
def test_classes_and_units_of_real_answers(snap, qname, qtype, cls, unit) -> None:
    response = answer(snap, query(qname, qtype), "192.0.2.1", time.time())
    assert classify(response) == cls
    assert unit_name(response, cls) == (wire_name(unit) if unit else b"")


def test_slip_response_is_the_header_with_tc_and_the_question(snap) -> None:
    q = query("big.gslb.example.test", 16, qid=0xBEEF)
    response = answer(snap, q, "192.0.2.1", time.time())
    assert len(response) > 1000
    slipped = slip_response(response)
    qlen = len(wire_name("big.gslb.example.test")) + 1 + 4
    assert slipped == (
        b"\xbe\xef" + bytes([response[2] | 0x02, response[3]]) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
        + response[12:12 + qlen]
    )
    assert slip_response(b"\x00" * 12 + b"\x05ab") is None  # a name that runs past the end


def test_bucket_gives_rate_times_seconds_plus_window() -> None:
    """A flood of 1000 q/s for 5 s: at most rate x (5 + window) full answers, in step with time."""
    rate, window, seconds = 20, 2.0, 5
    table = Table(1024, rate, window, slip=2)
    actions = [table.debit(7, 100.0 + i / 1000)[0] for i in range(seconds * 1000)]
    sent = actions.count(Action.SEND)
    assert rate * seconds <= sent <= rate * (seconds + window) + 1
    # Every other dropped response slips (slip 2), the first one included (as BIND).
    limited = [a for a in actions if a is not Action.SEND]
    assert limited[0] is Action.SLIP
    assert abs(limited.count(Action.SLIP) - limited.count(Action.DROP)) <= rate * seconds
    assert limited.count(Action.SLIP) >= len(limited) // 2 - sent


@pytest.mark.parametrize(("slip", "share"), [(0, 0.0), (1, 1.0), (2, 0.5), (4, 0.25)])
def test_slip_share(slip, share) -> None:
    table = Table(64, 10, 1, slip)
    actions = [table.debit(1, 5.0)[0] for _ in range(410)]
    limited = actions[10:]
    assert actions[:10] == [Action.SEND] * 10
    assert limited.count(Action.SLIP) == pytest.approx(share * 400, abs=1)


def test_quiet_unit_gets_its_burst_back() -> None:
    table = Table(64, 10, 1, 2)
    assert [table.debit(3, 0.0)[0] for _ in range(12)].count(Action.SEND) == 10
    assert table.debit(3, 0.05)[0] is not Action.SEND  # half a token since
    assert table.debit(3, 0.11)[0] is Action.SEND
    assert [table.debit(3, 10.0)[0] for _ in range(12)].count(Action.SEND) == 10  # capped at rate x window


def test_table_is_bounded_and_units_are_apart() -> None:
    table = Table(16, 1, 1, 0)
    assert len(table.buf) == 16 * SLOT_SIZE
    for tag in range(10_000):  # many more units than slots: memory does not grow
        table.debit(tag * 0x9E3779B97F4A7C15, 1.0)
    assert len(table.buf) == 16 * SLOT_SIZE
    t2 = Table(1 << 16, 1, 1, 0)
    assert t2.debit(hash(b"a"), 1.0)[0] is Action.SEND
    assert t2.debit(hash(b"a"), 1.0)[0] is Action.DROP
    assert t2.debit(hash(b"b"), 1.0)[0] is Action.SEND  # another unit has its own bucket


def packed(host: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


def test_limiter_counts_per_network_class_and_name(snap) -> None:
    limiter = Limiter(RRLSettings(rate=5, window=1, slip=2, exempt=("127.0.0.1/32", "2001:db8:ff::/48")))
    big = answer(snap, query("big.gslb.example.test", 16), "127.0.9.1", time.time())
    www = answer(snap, query("www.gslb.example.test", 1), "127.0.9.1", time.time())
    counts: dict = {}

    def sent(response: bytes, host: str, n: int = 20) -> int:
        return sum(limiter.screen_one(response, packed(host), 50.0, counts) == response for _ in range(n))

    assert sent(big, "127.0.9.1") == 5
    assert sent(big, "127.0.9.200") == 0  # the same /24
    assert sent(big, "127.0.10.1") == 5  # another network
    assert sent(www, "127.0.9.1") == 5  # another name
    assert sent(big, "127.0.0.1") == 20  # exempt
    assert sent(big, "2001:db8:1:100::1") == 5
    assert sent(big, "2001:db8:1:1ff::2") == 0  # the same /56
    assert sent(big, "2001:db8:1:200::1") == 5
    assert sent(big, "2001:db8:ff:1::1") == 20  # exempt
    assert counts[("slipped", "answer")] + counts[("dropped", "answer")] == 15 + 20 + 15 + 15 + 15 + 20 + 15
    assert set(counts) == {("slipped", "answer"), ("dropped", "answer")}


def test_batch_screen_drops_and_truncates_in_place(snap) -> None:
    limiter = Limiter(RRLSettings(rate=2, window=1, slip=2, exempt=("127.0.0.1/32",)))
    big = answer(snap, query("big.gslb.example.test", 16), "127.0.9.1", time.time())

    def sockaddr(host: str, port: int) -> bytes:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed(host) + b"\0" * 8

    trusted = [(big, sockaddr("127.0.0.1", 1000 + i)) for i in range(8)]
    assert limiter.screen(trusted, 1.0, {}) == trusted
    assert limiter.screen(trusted, 1.0, {}) is trusted  # known and exempt: the same list back
    flood = [(big, sockaddr(f"127.0.9.{i % 50 + 1}", 2000 + i)) for i in range(10)]
    counts: dict = {}
    out = limiter.screen(flood + trusted, 1.0, counts)
    full = [r for r, _ in out if r is big]
    tc = [r for r, _ in out if r is not big]
    assert len(full) == 2 + 8
    assert len(tc) == 4 and all(r[2] & 0x02 and r[6:12] == b"\0" * 6 for r in tc)
    assert counts == {("slipped", "answer"): 4, ("dropped", "answer"): 4}


def test_log_only_answers_everything_but_counts(snap) -> None:
    limiter = Limiter(RRLSettings(rate=1, log_only=True))
    nx = answer(snap, query("gone.gslb.example.test"), "127.0.9.1", time.time())
    counts: dict = {}
    assert all(limiter.screen_one(nx, packed("127.0.9.1"), 1.0, counts) is nx for _ in range(10))
    assert counts == {("logged", "nxdomain"): 9}


def test_settings_are_checked() -> None:
    assert not RRLSettings().enabled
    for bad in ({"rate": -1}, {"slip": -1}, {"window": 0}, {"ipv4_prefix": 33}, {"ipv6_prefix": 0},
                {"exempt": ("10.0.0.0/33",)}, {"slots": 1000}, {"share": "both"}):
        with pytest.raises(RRLSettingsError):
            RRLSettings(**bad)
    s = settings_from_mapping({"rate": 50, "exempt": "10.0.0.0/8", "log_only": True})
    assert (s.rate, s.exempt, s.log_only, s.slip) == (50.0, ("10.0.0.0/8",), True, 2)
    over = settings_from_mapping({"slip": 1}, s)
    assert (over.rate, over.slip) == (50.0, 1)
    for bad in ([1], {"rat": 1}, {"rate": "fast"}, {"slip": True}, {"exempt": [1]}, {"window": -2}):
        with pytest.raises(RRLSettingsError):
            settings_from_mapping(bad)


def test_a_trusted_query_is_never_limited(snap) -> None:
    """The cookie hook: asked only for a response about to be limited, with that response's query
    (found in the batch by its sockaddr object) and the client's address."""
    asked: list[tuple[bytes, bytes]] = []

    def trusted(data: bytes, address: bytes) -> bool:
        asked.append((data, address))
        return data.endswith(b"TRUST")

    limiter = Limiter(RRLSettings(rate=1, window=1, slip=0), trusted=trusted)
    big = answer(snap, query("big.gslb.example.test", 16), "127.0.9.1", time.time())
    addrs = [struct.pack("=H", socket.AF_INET) + struct.pack("!H", 3000 + i) + packed("127.0.9.9") + bytes(8) for i in range(6)]
    batch = [(b"q%d" % i + (b"TRUST" if i in (3, 5) else b""), a) for i, a in enumerate(addrs)]
    out = [(big, a) for _, a in batch if _ != b"q1"]  # q1 got no response at all
    counts: dict = {}
    kept = limiter.screen(out, 1.0, counts, batch)
    assert [a for _, a in kept] == [addrs[0], addrs[3], addrs[5]]
    assert [d for d, _ in asked] == [b"q2", b"q3TRUST", b"q4", b"q5TRUST"]
    assert {a for _, a in asked} == {packed("127.0.9.9")}
    assert counts == {("dropped", "answer"): 2, ("cookie", "answer"): 2}
    assert limiter.screen_one(big, packed("127.0.9.9"), 1.0, counts, b"xTRUST") is big
    assert limiter.screen_one(big, packed("127.0.9.9"), 1.0, counts, b"x") is None
