"""Hostile packets for the query parsers, and the rule their two builds keep.

`geodns.dns.wire` reads a query twice over: the common shape in one pass (`_scan.c`
where it is built, `scan_common` in Python otherwise) and every other shape in
the full parser; the answer is patched by `_scan.c`'s `patch` or `patch_python`.
The C and the Python build must decide every input alike, refusals included:

    check_parsers(data)                      the parse: same Query, same refusal and error bytes
    check_answers(data, c_snap, py_snap)     the whole answer() with the C twins vs the Python ones

Packets come from `seeds()` (queries of every shape the parsers know, for the
example zone gslb.example.test) through `mutate`, or from `random_packet`.
Used by tests/dns/test_parser_fuzz.py (bounded, in CI), tests/integration/test_fuzz.py
(at a live server) and tests/fuzz_long.py (the hour-long run).
"""

from __future__ import annotations

import contextlib
import random
import struct
import time
from collections.abc import Callable, Iterator

from geodns.dns import answer as answer_mod
from geodns.dns import cookies, wire
from geodns.dns.stats import Stats

try:
    from geodns.dns import _scan as c_scan_mod
except ImportError:  # the extension is optional: there is then one build, nothing to compare
    c_scan_mod = None

ZONE = "gslb.example.test"
NAMES = (
    "www",
    "geo",
    "fast",
    "wrr",
    "failover",
    "multi",
    "mail",
    "app",
    "api",
    "big",
    "_sip._tcp",
    "x.cdn",
    "legacy",
    "nope",
    "@",
)
QTYPES = (1, 28, 16, 255, 2, 6, 33, 15, 5, 43, 252, 251, 0, 41, 65535)
INTERESTING = (0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF)
"""Byte values at the edges of the format: label length 63, the two label-type bits, pointer."""


def name_wire(name: str) -> bytes:
    labels = [p for p in name.rstrip(".").split(".") if p]
    return b"".join(bytes([len(p)]) + p.encode() for p in labels) + b"\x00"


def long_name(octets: int) -> bytes:
    """A name of exactly `octets` bytes on the wire (length bytes and root label included)."""
    assert octets == 1 or octets >= 3, "no name is 2 bytes long"
    labels, left = [], octets - 1
    while left:
        size = min(64, left)
        if (
            left - size == 1
        ):  # a lone byte cannot be a label (it needs its length byte and one letter)
            size -= 1
        labels.append(bytes([size - 1]) + b"a" * (size - 1))
        left -= size
    return b"".join(labels) + b"\x00"


def header(
    qid: int = 0x2A2A, flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def option(code: int, body: bytes) -> bytes:
    return struct.pack("!HH", code, len(body)) + body


def ecs(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    return option(8, struct.pack("!HBB", family, source, scope) + address)


def opt_rr(
    payload: int = 1232,
    version: int = 0,
    do: bool = False,
    options: bytes = b"",
    owner: bytes = b"\x00",
) -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def query(
    qname: bytes,
    qtype: int = 1,
    additional: tuple[bytes, ...] = (),
    flags: int = 0,
    qclass: int = 1,
    qid: int = 0x2A2A,
) -> bytes:
    return (
        header(qid, flags, ar=len(additional))
        + qname
        + struct.pack("!HH", qtype, qclass)
        + b"".join(additional)
    )


def seeds() -> list[bytes]:
    """Well-formed and nearly well-formed queries: every branch of both parsers has one."""
    out = []
    names = [name_wire(f"{n}.{ZONE}" if n != "@" else ZONE) for n in NAMES]
    names += [
        name_wire("WwW.GsLb.ExAmPlE.TeSt"),
        name_wire("."),
        name_wire("example.org"),
        long_name(254),
        long_name(255),
        long_name(256),
        long_name(300),
    ]
    for i, qname in enumerate(names):
        qtype = QTYPES[i % len(QTYPES)]
        out.append(query(qname, qtype))
        out.append(query(qname, 1, (opt_rr(),)))
        out.append(query(qname, 28, (opt_rr(do=True, options=ecs(2, 48, bytes(6))),)))
    www = names[0]
    for family, source, address in (
        (1, 24, bytes([81, 2, 69])),
        (1, 32, bytes([81, 2, 69, 160])),
        (1, 0, b""),
        (1, 25, bytes([10, 1, 2, 128])),
        (2, 128, bytes(range(16))),
        (2, 56, bytes(7)),
        (1, 33, bytes(5)),
        (3, 8, b"\x01"),
        (1, 24, bytes([81, 2, 69, 0])),
    ):
        out.append(query(www, 1, (opt_rr(options=ecs(family, source, address)),)))
    out += [
        query(www, 1, (opt_rr(options=ecs(1, 24, bytes(3), scope=24)),)),  # scope in a query
        query(www, 1, (opt_rr(options=ecs(1, 24, bytes(3)) * 2),)),  # two ECS options
        query(www, 1, (opt_rr(options=option(10, bytes(8))),)),  # a client cookie (RFC 7873)
        query(www, 1, (opt_rr(options=option(10, bytes(range(24)))),)),  # client + server cookie
        query(www, 1, (opt_rr(options=option(10, bytes(5))),)),  # a cookie of a bad length
        query(www, 1, (opt_rr(options=option(10, bytes(8)) + ecs(1, 24, bytes(3))),)),
        query(
            www, 1, (opt_rr(options=option(12, bytes(40)) + option(65001, b"x")),)
        ),  # padding, local use
        query(www, 1, (opt_rr(version=1),)),
        query(www, 1, (opt_rr(payload=100),)),
        query(www, 1, (opt_rr(), opt_rr())),  # two OPT records
        query(www, 1, (opt_rr(owner=name_wire("x")),)),  # OPT with a non-root owner
        query(
            www, 1, (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4), opt_rr())
        ),  # a pointer
        query(www, 1, flags=0x0110),  # RD and CD
        query(www, 1, flags=0x2800),  # opcode 5 (UPDATE)
        query(www, 1, flags=0x8000),  # a response
        query(www, 1, flags=0x0200),  # TC
        query(www, 1, qclass=3),  # CHAOS
        header(qd=0),
        header(qd=2) + (www + b"\x00\x01\x00\x01") * 2,
        header(an=1)
        + www
        + b"\x00\x01\x00\x01"
        + b"\xc0\x0c"
        + struct.pack("!HHIH", 1, 1, 0, 4)
        + bytes(4),
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # a pointer in the question
        header(ar=1)
        + www
        + b"\x00\x01\x00\x01"
        + b"\xc0\x27\x00\x29\x04\xd0"
        + bytes(6),  # a pointer loop
    ]
    return out


def cookie_seeds(client: str) -> list[bytes]:
    """Queries with a server cookie of ours that is valid for `client` now (made with this
    process's secret), fresh and due for renewal, with and without ECS."""
    www = name_wire(f"www.{ZONE}")
    address = cookies.packed_address(client)
    now = int(time.time())
    out = []
    for age in (0, cookies.REFRESH_AGE + 60):
        client_cookie = bytes(range(1, 9))
        server = cookies.server_cookie(cookies.active().current, client_cookie, address, now - age)
        option_ = option(10, client_cookie + server)
        out.append(query(www, 1, (opt_rr(options=option_),)))
        out.append(query(www, 28, (opt_rr(options=ecs(1, 24, bytes([81, 2, 69])) + option_),)))
    return out


def mutate(rng: random.Random, pool: list[bytes]) -> bytes:
    """One to five mutations of a packet from `pool`; a tenth are random bytes instead."""
    if rng.random() < 0.1:
        return random_packet(rng)
    data = bytearray(rng.choice(pool))
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(11)
        if op == 0 and data:  # flip a bit
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif op == 1 and data:  # set a byte
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 2 and data:  # truncate
            del data[rng.randrange(len(data)) :]
        elif op == 3:  # insert junk
            i = rng.randrange(len(data) + 1)
            data[i:i] = rng.randbytes(rng.randrange(1, 40))
        elif op == 4 and len(data) >= 12:  # a count at the edge
            i = rng.choice((4, 6, 8, 10))
            data[i : i + 2] = struct.pack("!H", rng.choice((0, 1, 2, 3, 255, 0xFFFF)))
        elif op == 5 and len(data) >= 4:  # header flags: mostly a QUERY (opcode 0, QR clear)
            data[2] = rng.randrange(256) & (
                0x07 if rng.random() < 0.6 else 0x7F if rng.random() < 0.8 else 0xFF
            )
            data[3] = rng.randrange(256)
        elif op == 6:  # append bytes
            data += rng.randbytes(rng.randrange(0, 30))
        elif op == 7 and data:  # an edge value where a length or label type may be
            data[rng.randrange(len(data))] = rng.choice(INTERESTING)
        elif op == 8 and len(data) > 13:  # repeat a slice (longer names, repeated options)
            i = rng.randrange(12, len(data))
            j = min(len(data), i + rng.randrange(1, 70))
            data[i:i] = data[i:j] * rng.randrange(1, 5)
        elif op == 9 and len(data) > 12:  # cut a slice out
            i = rng.randrange(12, len(data))
            del data[i : i + rng.randrange(1, 20)]
        elif op == 10:  # splice: our head, another packet's tail
            other = rng.choice(pool)
            data = data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    return bytes(data)


def random_packet(rng: random.Random) -> bytes:
    """Random bytes; half behind a plausible header (one question, no QR), so they reach the name."""
    if rng.random() < 0.5:
        return rng.randbytes(rng.randrange(0, 600))
    return header(
        rng.randrange(65536), rng.randrange(256) & 0x79, 1, 0, 0, rng.randrange(3)
    ) + rng.randbytes(rng.randrange(0, 300))


def packets(seed: int, count: int, pool: list[bytes] | None = None) -> Iterator[bytes]:
    rng = random.Random(seed)
    pool = pool if pool is not None else seeds()
    for _ in range(count):
        yield mutate(rng, pool)


# ---- The rule: the C and the Python build decide alike ----


def outcome(parser: Callable[[bytes], wire.Query], data: bytes) -> object:
    """What a parser made of `data`: the Query, or the refusal with the bytes we would answer."""
    try:
        return parser(data)
    except wire.Ignore as exc:
        return ("ignore", str(exc))
    except wire.WireError as exc:
        return (type(exc).__name__, str(exc), int(exc.rcode), wire.error_response(exc))


def check_parsers(data: bytes) -> object:
    """Assert that every parser of this build agrees on `data`; return the full parser's outcome.

    - the C scan and `scan_common` give the same Query, or both None (not the common shape);
    - a Query from the scan equals what the full parser makes of the same bytes;
    - `parse_query` (scan, then the full parser) decides as the full parser alone, error bytes too;
    - nothing raises but Ignore and WireError.
    """
    full = outcome(wire.parse_query_full, data)
    common = wire.scan_common(data)
    if c_scan_mod is not None:
        c = c_scan_mod.scan(data)
        assert c == common, f"C scan {c!r} != Python scan {common!r} for {data.hex()}"
    if common is not None:
        assert common == full, f"scan {common!r} != full parser {full!r} for {data.hex()}"
    assert outcome(wire.parse_query, data) == full, data.hex()
    return full


@contextlib.contextmanager
def python_twins() -> Iterator[None]:
    """answer() with the Python scan and patch in place of `_scan.c`'s, for as long as it lasts."""
    saved = wire._scan, answer_mod.patch
    wire._scan, answer_mod.patch = wire.scan_common, wire.patch_python
    try:
        yield
    finally:
        wire._scan, answer_mod.patch = saved


def check_answers(data: bytes, c_snap, py_snap, client: str = "127.0.0.1") -> bytes | None:
    """answer() over UDP and TCP with the C twins on `c_snap` and the Python ones on `py_snap`
    (two snapshots of one zone state, fed the same packets): the same bytes, and no internal
    error (an answer() that fails answers SERVFAIL and counts it in `Stats.internal_errors`).
    Both are answered at one `now`: a server cookie carries the second it was made."""
    first = None
    now = time.time()
    for udp in (True, False):
        c_stats, py_stats = Stats(), Stats()
        c = answer_mod.answer(c_snap, data, client, now, udp, c_stats)
        with python_twins():
            py = answer_mod.answer(py_snap, data, client, now, udp, py_stats)
        assert c == py, f"udp={udp} {data.hex()}: C {c!r} != Python {py!r}"
        assert not c_stats.internal_errors and not py_stats.internal_errors, f"internal error (SERVFAIL) answering {data.hex()}"
        first = c if first is None else first
    return first
