"""Transports: UDP and TCP (RFC 7766) around the sans-I/O `answer()`.

Thin on purpose: they read the current snapshot through one attribute of a
`SnapshotRef` (swapped by the control plane) and the clock, call `answer()`,
and send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from geodns.dns.answer import answer
from geodns.dns.cookies import valid_server_cookie
from geodns.dns.explain import QueryLog
from geodns.dns.rrl import Limiter
from geodns.dns.snapshot import Snapshot
from geodns.dns.sources import SOURCES
from geodns.dns.stats import Stats

log = logging.getLogger("geodns.dns")

RCVBUF = 1 << 20
"""~1 MB: the default buffer (~200 queries) drops packets under a few hundred queries in flight."""


class SnapshotRef:
    """The one mutable thing the data plane reads: a reference to the current snapshot."""

    __slots__ = ("snapshot",)

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """`ADDR:PORT`, `[v6]:PORT`, or a bare port (127.0.0.1)."""
        text = text.strip()
        if text.isdigit():
            return cls("127.0.0.1", _port(text))
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"{text!r}: expected [ADDR]:PORT")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"{text!r}: expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
        socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP, flags=socket.AI_NUMERICHOST)
        return cls(host, _port(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


def cookie_trusted(data: bytes, client: str | bytes) -> bool:
    """Rate limiting's `trusted` check (`Limiter(trusted=)`): the query carries a server cookie
    of ours, valid now."""
    return valid_server_cookie(data, client, time.time())


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, ref: SnapshotRef, query_log: QueryLog | None = None, stats: Stats | None = None, rrl: Limiter | None = None):
        self.ref = ref
        self.query_log = query_log
        self.stats = stats if stats is not None else Stats()
        self.rrl = rrl
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)

    def datagram_received(self, data: bytes, addr) -> None:
        started = time.perf_counter()
        now = time.time()
        if SOURCES.enabled:
            SOURCES.note_host(addr[0])
        response = answer(self.ref.snapshot, data, addr[0], now, True, self.stats)
        self.stats.observe_latency(time.perf_counter() - started)
        if self.query_log is not None:
            self.query_log.log(self.ref.snapshot, addr[0], data, response, "udp", now)
        if response is not None and self.rrl is not None:
            response = self.rrl.screen_one(response, packed_host(addr[0]), time.monotonic(), self.stats.rrl, data)
        if response is not None:
            self.transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors from a client: not ours to fix
        log.debug("udp error: %s", exc)


def sockaddr_host(addr: bytes) -> str:
    """The IP address in a raw Linux sockaddr (from _mmsg.recv) as text."""
    if addr[0] == socket.AF_INET:  # sa_family is little-endian: its low byte comes first
        return socket.inet_ntop(socket.AF_INET, addr[4:8])
    return socket.inet_ntop(socket.AF_INET6, addr[8:24])


def packed_host(host: str) -> bytes:
    """An address from asyncio's (host, port) as 4 or 16 bytes."""
    host = host.split("%", 1)[0]
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)


class BatchedUDP:
    """UDP with recvmmsg/sendmmsg (geodns.dns._mmsg): one system call per 64 queries each way.

    The level-0 cache lookup (see AnswerCache) is inlined here because at
    ~200k queries/s the cost of one Python call per query is a tenth of the
    budget; everything else goes through `answer()`. Latency is observed per
    batch (from the receive call's return to the send call's), counted once
    per query in the batch: two clock reads per batch instead of per query.
    Response rate limiting (`rrl`) screens the batch's answers, cache hits
    included, before they are sent. The batch is answered at one `now` (the
    wall clock as the batch starts; a batch takes well under a millisecond).
    """

    MAX_ROUNDS = 16
    """Batches per wake-up before yielding, so TCP and the control pipe get a turn under flood."""

    def __init__(self, sock: socket.socket, ref: SnapshotRef, stats: Stats, query_log: QueryLog | None = None, rrl: Limiter | None = None):
        from geodns.dns import _mmsg

        self.rrl = rrl
        self.sock = sock
        self.fd = sock.fileno()
        self.ref = ref
        self.stats = stats
        self.query_log = query_log
        self._recv = _mmsg.recv
        self._send = _mmsg.send

    def on_readable(self) -> None:
        recv, send, fd, ref, stats = self._recv, self._send, self.fd, self.ref, self.stats
        counts, table = stats.counts, stats.slots
        clock, wall = time.perf_counter, time.time
        for _ in range(self.MAX_ROUNDS):
            batch = recv(fd, 64)
            if not batch:
                return
            started = clock()
            now = wall()
            if SOURCES.enabled:  # the middle query stands for its batch (latency measurement)
                SOURCES.note_sockaddr(batch[len(batch) >> 1][1], len(batch))
            snap = ref.snapshot
            get = snap.cache.packets.get
            out = []
            hits = 0
            if self.query_log is not None:
                for data, addr in batch:
                    host = sockaddr_host(addr)
                    response = answer(snap, data, host, now, True, stats)
                    self.query_log.log(snap, host, data, response, "udp", now)
                    if response is not None:
                        out.append((response, addr))
            else:
                for data, addr in batch:
                    hit = get(data[2:])
                    if hit is not None and hit[1] is None and hit[4] is table:
                        counts[hit[2]] += 1
                        hits += 1
                        out.append((data[:2] + hit[0], addr))
                        continue
                    response = answer(snap, data, sockaddr_host(addr), now, True, stats)
                    if response is not None:
                        out.append((response, addr))
            # Answer time without the socket, as the metric promises: the batch's
            # compute time, split evenly would hide nothing useful at 64 per batch.
            stats.observe_latency_n((clock() - started) / len(batch), len(batch))
            stats.cache_hits += hits
            if out and self.rrl is not None:
                out = self.rrl.screen(out, time.monotonic(), stats.rrl, batch)
            if out:
                send(fd, out)
            if len(batch) < 64:
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        self.sock.close()


def batched_io_available() -> bool:
    try:
        from geodns.dns import _mmsg  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("GEODNS_MMSG", "1") != "0"


class TCPServer:
    """RFC 7766: length-prefixed messages, several per connection, answered in order.

    Idle connections are closed after `idle_timeout`, a message that trickles in
    slower than `read_timeout` is dropped, and when `max_connections` are open
    the least recently active one is closed to make room, so a crowd of idle
    connections never locks real clients out.
    """

    def __init__(
        self,
        ref: SnapshotRef,
        idle_timeout: float = 10.0,
        read_timeout: float = 3.0,
        max_connections: int = 512,
        query_log: QueryLog | None = None,
        stats: Stats | None = None,
    ):
        self.ref = ref
        self.stats = stats if stats is not None else Stats()
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.query_log = query_log
        self._active: OrderedDict[asyncio.StreamWriter, float] = OrderedDict()

    def _touch(self, writer: asyncio.StreamWriter) -> None:
        self._active[writer] = time.monotonic()
        self._active.move_to_end(writer)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        while len(self._active) >= self.max_connections:
            oldest, _ = self._active.popitem(last=False)
            oldest.close()
        self._touch(writer)
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), self.idle_timeout)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                (length,) = struct.unpack("!H", head)
                try:
                    data = await asyncio.wait_for(reader.readexactly(length), self.read_timeout)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                self._touch(writer)
                if SOURCES.enabled:
                    SOURCES.note_host(client)
                now = time.time()
                response = answer(self.ref.snapshot, data, client, now, False, self.stats)
                if self.query_log is not None:
                    self.query_log.log(self.ref.snapshot, client, data, response, "tcp", now)
                if response is None:
                    continue
                writer.write(struct.pack("!H", len(response)) + response)
                try:
                    await asyncio.wait_for(writer.drain(), self.read_timeout)
                except TimeoutError:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._active.pop(writer, None)
            if SOURCES.enabled:  # the kernel's smoothed RTT to this client (latency measurement)
                SOURCES.note_tcp(writer.get_extra_info("socket"), client)
            writer.close()


async def start_listeners(
    ref: SnapshotRef,
    listens: list[Listen],
    query_log: QueryLog | None = None,
    reuse_port: bool = False,
    tcp: bool = True,
    udp: bool = True,
    stats: Stats | None = None,
    rrl: Limiter | None = None,
) -> list[Callable[[], None]]:
    """Bind UDP and TCP on each address; returns closers. Raises OSError if a bind fails.
    `query_log` logs queries (`--query-log`); `rrl` limits the UDP responses (TCP is never
    limited: its clients cannot be spoofed)."""
    loop = asyncio.get_running_loop()
    closers: list[Callable[[], None]] = []
    stats = stats if stats is not None else Stats()
    tcp_server = TCPServer(ref, query_log=query_log, stats=stats)
    for listen in listens:
        if udp:
            family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((listen.host, listen.port))
            if batched_io_available():
                sock.setblocking(False)
                reader = BatchedUDP(sock, ref, stats, query_log, rrl)
                loop.add_reader(sock.fileno(), reader.on_readable)
                closers.append(reader.close)
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UDPProtocol(ref, query_log, stats, rrl), sock=sock
                )
                closers.append(transport.close)
        if tcp:
            server = await asyncio.start_server(
                tcp_server.handle, listen.host, listen.port, reuse_address=True, reuse_port=reuse_port or None
            )
            closers.append(server.close)
    return closers
