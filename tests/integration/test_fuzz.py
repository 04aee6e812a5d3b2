"""Random and mutated packets, bounded and seeded: the server never stops and never answers junk with junk."""

from __future__ import annotations

import random
import socket
import struct
import time

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnsclient import addresses, fqdn, query, raw_tcp, raw_udp, read_framed, tcp, udp
from fuzzing import long_name, mutate
from fuzzing import seeds as parser_seeds

from . import wirebuild as wb

SEED = 20261126
UDP_PACKETS = 6000
TCP_PACKETS = 3000
SENTINEL_ID = 0xFFFF
SENTINEL = query(fqdn("mail"), "A", qid=SENTINEL_ID).to_wire()


def corpus() -> list[bytes]:
    seeds = []
    for name in (
        "www",
        "mail",
        "big",
        "nope",
        "app",
        "api",
        "foo.cdn",
        "foo.legacy",
        "@",
        "wrr",
        "_sip._tcp",
    ):
        for rdtype in ("A", "AAAA", "TXT", "ANY", "NS", "SOA", "SRV", "AXFR"):
            seeds.append(query(fqdn(name), rdtype).to_wire())
        seeds.append(query(fqdn(name), "A", ecs="81.2.69.0/24").to_wire())
        seeds.append(query(fqdn(name), "AAAA", ecs="2800:3f0:4001::/48", do=True).to_wire())
    seeds.append(wb.query(fqdn("www"), 1, [wb.opt_rr(version=1)]))
    seeds.append(wb.query(fqdn("www"), 1, [wb.opt_rr(), wb.opt_rr()]))
    seeds.append(
        wb.query(fqdn("www"), 1, [wb.opt_rr(options=wb.ecs_option(1, 24, 0, bytes([8, 8, 8])))])
    )
    # compression pointers where they do not belong: in the question, and a pointer loop in the additional section
    seeds.append(struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
    seeds.append(
        struct.pack("!HHHHHH", 2, 0, 1, 0, 0, 1)
        + wb.question(fqdn("www"))
        + b"\xc0\x27\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    )
    return seeds + parser_seeds()  # every shape the parsers know (tests/fuzzing.py)


def check_response(response: bytes, sent: bytes) -> None:
    """An answer to junk must still be a well-formed DNS response to that query."""
    assert len(response) >= 12, response
    qid, flags = struct.unpack_from("!HH", response)
    assert qid == struct.unpack_from("!H", sent)[0]
    assert flags & 0x8000, "QR set"
    assert not sent[2] & 0x80, "a message with QR set was answered"
    opcode = (flags >> 11) & 0xF
    parse = bytearray(response)
    if (
        opcode == 5
    ):  # dnspython reads UPDATE sections by other rules; check the structure as a QUERY
        parse[2] &= 0x87
    msg = dns.message.from_wire(bytes(parse))
    assert msg.rcode() != dns.rcode.SERVFAIL, f"internal error for {sent.hex()}"


def numbered(rng: random.Random, seeds: list[bytes], n: int) -> list[bytes]:
    out = []
    for i in range(n):
        p = mutate(rng, seeds)
        if len(p) >= 2:
            p = struct.pack("!H", i) + p[2:]
        out.append(p)
    return out


def rcode_of_wire(response: bytes) -> int:
    return struct.unpack_from("!H", response, 2)[0] & 0xF


def assert_still_answers(server) -> None:
    assert server.alive(), server.log_text()
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
    for transport in (udp, tcp):
        r = transport(server, query(fqdn("www"), "A", ecs="81.2.69.0/24"))
        assert addresses(r) == ["192.0.2.30"]


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    return server_factory()


def test_fuzz_udp(fuzz_server):
    rng = random.Random(SEED)
    packets = numbered(rng, corpus(), UDP_PACKETS)
    responses: dict[int, bytes] = {}
    bad: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)
        for start in range(0, len(packets), 50):
            batch = packets[start : start + 50]
            for p in batch:
                s.sendto(p, (fuzz_server.host, fuzz_server.port))
            # A good query last: once it is answered, the batch before it has been handled.
            s.sendto(SENTINEL, (fuzz_server.host, fuzz_server.port))
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                try:
                    data = s.recv(65535)
                except TimeoutError:
                    continue
                if data[:2] == SENTINEL[:2]:
                    break
                if len(data) < 2:
                    bad.append(f"short response {data!r}")
                    continue
                (qid,) = struct.unpack_from("!H", data)
                if qid >= len(packets):
                    bad.append(f"response with an ID we never sent: {data.hex()}")
                    continue
                if qid in responses:
                    bad.append(f"two responses to packet {qid}")
                responses[qid] = data
                try:
                    check_response(data, packets[qid])
                except Exception as exc:  # noqa: BLE001 - collect every failure
                    bad.append(f"{packets[qid].hex()} -> {data.hex()}: {exc!r}")
    assert not bad, "\n".join(bad[:20])
    assert len(responses) > UDP_PACKETS // 10, (
        "most junk is answered with FORMERR or similar, not silence"
    )
    assert_still_answers(fuzz_server)


def test_fuzz_tcp(fuzz_server):
    rng = random.Random(SEED + 1)
    packets = numbered(rng, corpus(), TCP_PACKETS)
    bad: list[str] = []
    answered = 0
    for start in range(0, len(packets), 25):
        batch = packets[start : start + 25]
        with socket.create_connection((fuzz_server.host, fuzz_server.port), timeout=3) as s:
            stream = b"".join(struct.pack("!H", len(p)) + p for p in batch)
            stream += struct.pack("!H", len(SENTINEL)) + SENTINEL
            if (
                rng.random() < 0.1
            ):  # then a broken frame, a length longer than what follows, and we hang up
                stream += b"\x01\x00" + rng.randbytes(20)
            try:
                s.sendall(stream)
                while True:
                    data = read_framed(s)
                    (qid,) = struct.unpack_from("!H", data)
                    if qid == SENTINEL_ID:
                        break
                    answered += 1
                    try:
                        check_response(data, packets[qid])
                    except Exception as exc:  # noqa: BLE001 - collect every failure
                        bad.append(f"{packets[qid].hex()} -> {data.hex()}: {exc!r}")
            except (ConnectionError, TimeoutError, OSError):
                pass  # the server may close a connection that sent junk, or wait out a broken frame
    assert not bad, "\n".join(bad[:20])
    assert answered > TCP_PACKETS // 10
    assert_still_answers(fuzz_server)


def test_response_flood_is_never_answered(fuzz_server):
    """Reflection: well-formed responses (QR set) get no answer at all."""
    rng = random.Random(SEED + 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for i in range(200):
            r = dns.message.make_response(
                query(fqdn(rng.choice(["www", "mail", "nope"])), "A", qid=i)
            )
            r.flags |= rng.choice([0, dns.flags.AA, dns.flags.TC])
            s.sendto(r.to_wire(), (fuzz_server.host, fuzz_server.port))
        with pytest.raises(TimeoutError):
            s.recv(4096)
    assert_still_answers(fuzz_server)


@pytest.mark.parametrize("over", ["udp", "tcp"])
def test_a_name_of_256_octets_or_more_is_formerr(fuzz_server, over):
    """RFC 1035 3.1: 255 octets at most, length bytes and root included. 255 is read (and
    REFUSED: not our zone), 256 and more are FORMERR, with and without EDNS, never SERVFAIL."""
    send = raw_udp if over == "udp" else raw_tcp
    for octets, want in (
        (255, dns.rcode.REFUSED),
        (256, dns.rcode.FORMERR),
        (257, dns.rcode.FORMERR),
        (400, dns.rcode.FORMERR),
    ):
        for additional in ((), (wb.opt_rr(),)):
            sent = struct.pack("!HHHHHH", octets, 0x0100, 1, 0, 0, len(additional)) + long_name(
                octets
            )
            sent += struct.pack("!HH", 1, 1) + b"".join(additional)
            response = send(fuzz_server, sent)
            assert response is not None, (octets, over)
            assert response[:2] == sent[:2] and response[2] & 0x81 == 0x81  # our ID, QR, RD echoed
            assert rcode_of_wire(response) == want, (octets, additional, response.hex())
    # A name that runs to 255 octets in the zone is ours (NXDOMAIN, not REFUSED).
    suffix = wb.name_wire(fqdn("www"))
    inside = long_name(255 - len(suffix) + 1)[:-1] + suffix
    assert len(inside) == 255
    response = send(
        fuzz_server, struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + inside + b"\x00\x01\x00\x01"
    )
    assert rcode_of_wire(response) == dns.rcode.NXDOMAIN, response.hex()
    assert_still_answers(fuzz_server)
