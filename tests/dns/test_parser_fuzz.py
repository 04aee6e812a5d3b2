"""Parsers that take any packet: the C and the Python build of the query parser and the answer
patch decide every mutated and random packet alike (tests/fuzzing.py says what "alike" is).

Bounded and seeded, so it runs in CI in a few seconds; tests/fuzz_long.py is the same check for
an hour, with the C extensions built with AddressSanitizer.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest
from fuzzing import (
    c_scan_mod,
    check_answers,
    check_parsers,
    cookie_seeds,
    long_name,
    opt_rr,
    packets,
    python_twins,
    query,
    random_packet,
    seeds,
)

from geodns.control.controller import Controller
from geodns.dns import wire

REPO = Path(__file__).resolve().parents[2]
SEED = 20261204
PARSES = 100_000
ANSWERS = 20_000
BUDGET_S = 20.0
"""A guard for a slow machine, not the normal bound: the counts above take a few seconds."""

needs_c = pytest.mark.skipif(
    c_scan_mod is None, reason="geodns.dns._scan is not built: one build, nothing to compare"
)


def snapshot():
    """A snapshot of the example zone of its own: weighted names keep their round-robin turn in
    what a snapshot shares with its copies, so the two builds each get one."""
    c = Controller(str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb"))
    c.start()
    return c.snapshot


def rcode(response: bytes) -> int:
    return struct.unpack_from("!H", response, 2)[0] & 0xF


# ---- A name of 256 octets or more (RFC 1035 3.1: 255 at most, root label included) ----


@pytest.mark.parametrize("octets", [1, 3, 254, 255])
def test_a_name_up_to_255_octets_is_read(octets):
    qname = long_name(octets)
    assert len(qname) == octets
    for data in (query(qname, 1), query(qname, 1, (opt_rr(),))):
        q = check_parsers(data)
        assert isinstance(q, wire.Query) and q.qname == qname
        if c_scan_mod is not None:
            assert c_scan_mod.scan(data) == q  # the common shape: the C scan reads it itself


@pytest.mark.parametrize("octets", [256, 257, 300, 1000])
def test_a_name_of_256_octets_or_more_is_formerr(octets):
    qname = long_name(octets)
    for data in (
        query(qname, 1),
        query(qname, 1, (opt_rr(),)),
        query(qname, 28, (opt_rr(do=True),), flags=0x0100),
    ):
        got = check_parsers(data)
        assert got[0] == "FormErr" and got[2] == wire.Rcode.FORMERR, got
        if c_scan_mod is not None:
            assert c_scan_mod.scan(data) is None  # left to the full parser, which refuses it
        with pytest.raises(wire.FormErr):
            wire.parse_query(data)
        with python_twins(), pytest.raises(wire.FormErr):
            wire.parse_query(data)


def test_a_long_name_in_the_additional_section_is_formerr():
    record = long_name(256) + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4)
    data = query(long_name(20), 1, (record,))
    got = check_parsers(data)
    assert got[0] == "FormErr" and "name longer" in got[1], got


def test_answer_to_a_256_octet_name_is_formerr_not_servfail():
    """answer() (what the transports call) with both builds: FORMERR with the ID, RD echoed."""
    for octets, want in (
        (255, wire.Rcode.REFUSED),
        (256, wire.Rcode.FORMERR),
        (400, wire.Rcode.FORMERR),
    ):
        data = query(long_name(octets), 1, (opt_rr(),), flags=0x0100, qid=0x1234)
        response = check_answers(data, snapshot(), snapshot())
        assert response[:2] == b"\x12\x34"
        assert rcode(response) == want, (octets, response.hex())
        assert response[2] & 0x81 == 0x81  # QR, RD copied


# ---- Fuzz: the two builds agree on every input ----


@needs_c
def test_c_and_python_parsers_agree_on_mutated_and_random_packets():
    deadline = time.monotonic() + BUDGET_S
    shapes: dict[str, int] = {}
    n = 0
    for data in packets(SEED, PARSES):
        got = check_parsers(data)
        kind = "query" if isinstance(got, wire.Query) else got[0]
        shapes[kind] = shapes.get(kind, 0) + 1
        n += 1
        if time.monotonic() > deadline:
            break
    assert n >= PARSES // 4, f"only {n} packets in {BUDGET_S} s"
    # The mutations reach every kind of outcome, parsed queries included.
    assert {"query", "FormErr", "NotImp", "BadVers", "ignore"} <= set(shapes), shapes
    assert shapes["query"] > n // 20, shapes


@needs_c
def test_c_and_python_answers_agree_on_mutated_packets():
    """The whole answer(): parse, cache levels, steering and the patch, C twins vs Python twins,
    over UDP (truncation, level 0) and TCP; no packet makes answer() fail (SERVFAIL)."""
    c_snap, py_snap = snapshot(), snapshot()
    rng = random.Random(SEED + 1)
    rcodes: dict[int, int] = {}
    deadline = time.monotonic() + BUDGET_S
    pool = seeds() + cookie_seeds("127.0.0.1") + cookie_seeds("81.2.69.160")
    for i, data in enumerate(packets(SEED + 1, ANSWERS, pool)):
        client = rng.choice(("127.0.0.1", "81.2.69.160", "2001:db8::1"))
        response = check_answers(data, c_snap, py_snap, client)
        if response is not None:
            rcodes[rcode(response)] = rcodes.get(rcode(response), 0) + 1
        if time.monotonic() > deadline:
            assert i >= ANSWERS // 4
            break
    assert rcodes.get(0, 0) > 100 and rcodes.get(1, 0) > 100, rcodes  # answers and FORMERRs both


@needs_c
def test_answers_with_a_valid_server_cookie_agree():
    """The cookie paths of the patch (echoed as sent, renewed, appended after the ECS echo) and
    level 0's per-client echo: the same bytes from both builds, twice over (a cache hit)."""
    c_snap, py_snap = snapshot(), snapshot()
    for data in cookie_seeds("127.0.0.1") * 2:
        response = check_answers(data, c_snap, py_snap, "127.0.0.1")
        assert rcode(response) == wire.Rcode.NOERROR
        assert (
            b"\x00\x0a\x00\x18" + data[-24:-16] in response
        )  # COOKIE, 24 bytes, our client cookie


def test_random_packets_never_raise_anything_else():
    """Without the C build too: the Python parser alone only ever answers or refuses."""
    rng = random.Random(SEED + 2)
    for _ in range(5000):
        data = random_packet(rng)
        with python_twins():
            check_parsers(data)
