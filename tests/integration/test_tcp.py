"""DNS over TCP (RFC 7766): framing, pipelining, idle and slow connections, connection crowds."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import time

import dns.message
import dns.rcode
import pytest
from dnsclient import addresses, fqdn, query, read_framed, tcp

IDLE_LIMIT = 15.0
"""Seconds within which an idle connection must be closed ("a few seconds"; the server uses 10)."""


def connect(server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout)


def framed(msg: dns.message.Message) -> bytes:
    wire = msg.to_wire()
    return struct.pack("!H", len(wire)) + wire


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes `sock` (EOF or reset), or None if it is still open after `seconds`."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
    return None


def test_length_prefixed_query_and_answer(example_server):
    with connect(example_server) as s:
        q = query(fqdn("www"), "A", qid=0x7CB1)
        s.sendall(framed(q))
        (length,) = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))
        body = s.recv(length, socket.MSG_WAITALL)
        assert len(body) == length
        r = dns.message.from_wire(body)
        assert r.id == 0x7CB1 and addresses(r) == ["192.0.2.10"]


def test_length_prefix_and_message_in_separate_writes(example_server):
    with connect(example_server) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wire = query(fqdn("mail"), "A", qid=0x5117).to_wire()
        s.sendall(struct.pack("!H", len(wire)))
        time.sleep(0.1)
        s.sendall(wire[:7])
        time.sleep(0.1)
        s.sendall(wire[7:])
        r = dns.message.from_wire(read_framed(s))
        assert r.id == 0x5117 and addresses(r) == ["192.0.2.25"]


def test_pipelined_queries_answered_in_order(example_server):
    names = ["www", "mail", "nope", "app", "foo.cdn", "legacy", "@", "big", "wrr", "failover"] * 3
    queries = [
        query(fqdn(n), "TXT" if n == "big" else "A", qid=1000 + i) for i, n in enumerate(names)
    ]
    with connect(example_server) as s:
        s.sendall(b"".join(framed(q) for q in queries))  # all at once, before reading any answer
        answers = [dns.message.from_wire(read_framed(s)) for _ in queries]
    assert [a.id for a in answers] == [q.id for q in queries]
    assert [a.question[0].name for a in answers] == [q.question[0].name for q in queries]
    big = answers[names.index("big")]
    assert len(big.answer[0]) == 13, "full answer over TCP"


def test_several_sequential_queries_on_one_connection(example_server):
    with connect(example_server) as s:
        for i, (subnet, expected) in enumerate(
            [("81.2.69.0/24", "192.0.2.30"), ("8.8.8.0/24", "192.0.2.20")] * 5
        ):
            s.sendall(framed(query(fqdn("www"), "A", ecs=subnet, qid=i)))
            r = dns.message.from_wire(read_framed(s))
            assert r.id == i and addresses(r) == [expected]


def test_zero_length_message_does_not_stop_the_connection_or_server(example_server):
    with connect(example_server) as s:
        s.sendall(b"\x00\x00")
        s.sendall(framed(query(fqdn("www"), "A", qid=77)))
        with contextlib.suppress(ConnectionError, TimeoutError):
            r = dns.message.from_wire(read_framed(s))
            assert r.id == 77
    assert addresses(tcp(example_server, query(fqdn("www"), "A"))) == ["192.0.2.10"]


@pytest.mark.slow
def test_idle_connections_are_closed(example_server):
    """Both a connection that never sends and one idle after an answer; watched together to save time."""
    with connect(example_server) as silent, connect(example_server) as used:
        used.sendall(framed(query(fqdn("www"), "A")))
        read_framed(used)
        start = time.monotonic()
        assert closed_within(silent, IDLE_LIMIT) is not None, (
            f"a silent connection was open after {IDLE_LIMIT} s"
        )
        left = max(0.5, IDLE_LIMIT - (time.monotonic() - start))
        assert closed_within(used, left) is not None, (
            "a connection idle after a query was never closed"
        )


def test_trickling_message_is_dropped(example_server):
    """Slowloris: a length prefix, then one byte every 0.5 s; the server must not wait for the rest."""
    wire = query(fqdn("www"), "A").to_wire()
    with connect(example_server) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(struct.pack("!H", len(wire)))
        start = time.monotonic()
        closed = False
        for byte in wire[:-1]:  # ~20 s if the server waited for all of it
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            if closed_within(s, 0.5) is not None:
                closed = True
                break
        took = time.monotonic() - start
    assert closed, "the trickling connection was never closed"
    assert took < 8, f"took {took:.1f} s to drop a trickling message"


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, hard limit {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.parametrize("partial", [False, True], ids=["silent", "half-sent-prefix"])
def test_crowd_of_idle_connections_does_not_lock_out_a_real_client(example_server, partial):
    crowd_size = 600
    raise_fd_limit(crowd_size + 200)
    crowd: list[socket.socket] = []
    try:
        for _ in range(crowd_size):
            s = connect(example_server, timeout=5)
            if partial:
                s.sendall(b"\x00")
            crowd.append(s)
        start = time.monotonic()
        r = tcp(example_server, query(fqdn("www"), "A", qid=4242))
        took = time.monotonic() - start
        assert r.id == 4242 and r.rcode() == dns.rcode.NOERROR
        assert addresses(r) == ["192.0.2.10"]
        assert took < 2.0, f"a real client waited {took:.2f} s behind {crowd_size} idle connections"
        # and a pipelined client on a fresh connection, too
        with connect(example_server) as s:
            s.sendall(
                framed(query(fqdn("mail"), "A", qid=1)) + framed(query(fqdn("www"), "A", qid=2))
            )
            assert [dns.message.from_wire(read_framed(s)).id for _ in range(2)] == [1, 2]
    finally:
        for s in crowd:
            s.close()
    assert example_server.alive()
