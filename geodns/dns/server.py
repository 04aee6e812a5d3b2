"""Transports: UDP and TCP (RFC 7766) around the sans-I/O `answer()`.

Thin on purpose: they read the current snapshot through one attribute of a
`SnapshotRef` (swapped by the control plane), call `answer()`, and send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from geodns.dns.answer import answer, client_address, locate, narrowing_of, sender_address
from geodns.dns.resolve import name_of, resolve
from geodns.dns.rrl import Limiter
from geodns.dns.snapshot import Snapshot
from geodns.dns.sources import SOURCES
from geodns.dns.stats import Stats
from geodns.dns.wire import CLASS_IN, Query, Rcode, parse_query

log = logging.getLogger("geodns.dns")
querylog = logging.getLogger("geodns.query")

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


QUERY_LOG_SAMPLE = float(os.environ.get("GEODNS_QUERY_LOG_SAMPLE", "1") or 1)
"""Share of queries `--query-log` logs (`--query-log-sample`; workers inherit it by environment)."""


def log_query(snap: Snapshot, client: str, data: bytes, response: bytes | None, transport: str) -> None:
    """One line per (sampled) query, only when asked (`--query-log`): who asked what, what they
    got, and why (`reason`: the step that decided a steered answer, the regions, the place)."""
    if QUERY_LOG_SAMPLE < 1.0 and random.random() >= QUERY_LOG_SAMPLE:
        return
    from dnslib import DNSRecord

    try:
        query = parse_query(data)
    except Exception:  # noqa: BLE001 - logging must not fail on junk
        query = None
    what, why = "malformed", ""
    if query is not None:
        what = f"name={name_of(query.qname)} type={query.qtype}"
        if query.edns is not None and query.edns.ecs is not None:
            ecs = query.edns.ecs
            fam = socket.AF_INET if ecs.family == 1 else socket.AF_INET6
            what += f" subnet={socket.inet_ntop(fam, ecs.address)}/{ecs.source}"
        try:
            why = " " + reason(snap, query, client)
        except Exception:  # noqa: BLE001 - as above
            why = " reason=unknown"
    rcode = response[3] & 0xF if response and len(response) > 3 else -1
    answer_text = "-"
    if response:
        try:
            answer_text = ",".join(str(rr.rdata) for rr in DNSRecord.parse(response).rr) or "-"
        except Exception:  # noqa: BLE001 - as above
            answer_text = "unparsed"
    querylog.info(
        "query client=%s transport=%s %s rcode=%d answer=%s size=%d%s",
        client, transport, what, rcode, answer_text, len(response or b""), why,
    )


def reason(snap: Snapshot, query: Query, client: str) -> str:
    """Why a query got its answer, as key=value pairs: for a steered name the deciding step, the
    regions of each branch, fail-open, the client's place and the network the answer covers;
    otherwise what kind of answer it is. Resolves again (off the answer path, sampled)."""
    if query.qclass != CLASS_IN:
        return "reason=refused"
    name = name_of(query.qname)
    czone = snap.find_zone(name)
    if czone is None:
        return "reason=not-our-zone"
    address, origin = client_address(query, client)
    located, _ = locate(snap, czone, address, origin, narrowing_of(snap, czone, name, query.qtype), name)
    if origin == "ECS" and snap.measured is not None:
        located.resolver = sender_address(client)  # as the answer path: the resolver's RTTs may steer
    res = resolve(snap, czone, name, query.qtype, lambda: located, explain=True)
    decision = res.decision
    if decision is None:
        if res.rcode == Rcode.REFUSED:
            return "reason=refused"
        if not res.aa:
            return "reason=referral"
        if res.rcode == Rcode.NXDOMAIN:
            return "reason=nxdomain"
        return "reason=static" if res.answer else "reason=nodata"
    regions = "|".join(",".join(b.regions) for b in decision.branches)
    place = located.location.describe() if located.location is not None else "unknown"
    # The latency step's note says which source decided (measured or the table) and the RTTs.
    rtts = "".join(f' latency="{t.note}"' for t in decision.trace if t.step == "latency" and t.note)
    return (
        f"reason={decision.decided_by} regions={regions} failopen={str(decision.failopen).lower()} "
        f'by={origin.replace(" ", "-")} network={located.network} place="{place}"{rtts}'
    )


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, ref: SnapshotRef, log_queries: bool = False, stats: Stats | None = None, rrl: Limiter | None = None):
        self.ref = ref
        self.log_queries = log_queries
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
        if SOURCES.enabled:
            SOURCES.note_host(addr[0])
        response = answer(self.ref.snapshot, data, addr[0], True, self.stats)
        self.stats.observe_latency(time.perf_counter() - started)
        if self.log_queries:
            log_query(self.ref.snapshot, addr[0], data, response, "udp")
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
    included, before they are sent.
    """

    MAX_ROUNDS = 16
    """Batches per wake-up before yielding, so TCP and the control pipe get a turn under flood."""

    def __init__(self, sock: socket.socket, ref: SnapshotRef, stats: Stats, log_queries: bool = False, rrl: Limiter | None = None):
        from geodns.dns import _mmsg

        self.rrl = rrl
        self.sock = sock
        self.fd = sock.fileno()
        self.ref = ref
        self.stats = stats
        self.log_queries = log_queries
        self._recv = _mmsg.recv
        self._send = _mmsg.send

    def on_readable(self) -> None:
        recv, send, fd, ref, stats = self._recv, self._send, self.fd, self.ref, self.stats
        counts = stats.counts
        clock = time.perf_counter
        for _ in range(self.MAX_ROUNDS):
            batch = recv(fd, 64)
            if not batch:
                return
            started = clock()
            if SOURCES.enabled:  # the middle query stands for its batch (latency measurement)
                SOURCES.note_sockaddr(batch[len(batch) >> 1][1], len(batch))
            snap = ref.snapshot
            get = snap.cache.packets.get
            out = []
            hits = 0
            if self.log_queries:
                for data, addr in batch:
                    host = sockaddr_host(addr)
                    response = answer(snap, data, host, True, stats)
                    log_query(snap, host, data, response, "udp")
                    if response is not None:
                        out.append((response, addr))
            else:
                for data, addr in batch:
                    hit = get(data[2:])
                    if hit is not None and hit[1] is None:
                        counts[hit[2]] += 1
                        hits += 1
                        out.append((data[:2] + hit[0], addr))
                        continue
                    response = answer(snap, data, sockaddr_host(addr), True, stats)
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
        log_queries: bool = False,
        stats: Stats | None = None,
    ):
        self.ref = ref
        self.stats = stats if stats is not None else Stats()
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.log_queries = log_queries
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
                response = answer(self.ref.snapshot, data, client, False, self.stats)
                if self.log_queries:
                    log_query(self.ref.snapshot, client, data, response, "tcp")
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
    log_queries: bool = False,
    reuse_port: bool = False,
    tcp: bool = True,
    udp: bool = True,
    stats: Stats | None = None,
    rrl: Limiter | None = None,
) -> list[Callable[[], None]]:
    """Bind UDP and TCP on each address; returns closers. Raises OSError if a bind fails.
    `rrl` limits the UDP responses (TCP is never limited: its clients cannot be spoofed)."""
    loop = asyncio.get_running_loop()
    closers: list[Callable[[], None]] = []
    stats = stats if stats is not None else Stats()
    tcp_server = TCPServer(ref, log_queries=log_queries, stats=stats)
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
                reader = BatchedUDP(sock, ref, stats, log_queries, rrl)
                loop.add_reader(sock.fileno(), reader.on_readable)
                closers.append(reader.close)
            else:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UDPProtocol(ref, log_queries, stats, rrl), sock=sock
                )
                closers.append(transport.close)
        if tcp:
            server = await asyncio.start_server(
                tcp_server.handle, listen.host, listen.port, reuse_address=True, reuse_port=reuse_port or None
            )
            closers.append(server.close)
    return closers
