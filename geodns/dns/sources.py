"""What the data plane tells latency measurement: who queries this node, and TCP's RTT to them.

Bounded tallies, taken (and emptied) by the control plane about once a second
(`geodns.control.latency_probe`); workers send theirs to the parent with their
stats. The hot path pays one dict update per UDP batch (the batch's middle
query stands for all of it, weighted by the batch size), per asyncio UDP query
and per TCP query; a TCP connection adds one `getsockopt(TCP_INFO)` when it ends.
"""

from __future__ import annotations

import socket
import struct

MAX_ADDRESSES = 4096
"""Distinct source addresses kept between two takes (a flood of new ones is sampled, not stored)."""
MAX_RTTS = 1024
SOURCES_ENV = "GEODNS_LATENCY_SOURCES"
"""Set to 1 by a node that measures latency, before it starts workers (they inherit it)."""

_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_RTT = struct.Struct("=I")
_RTT_OFFSET = 68
"""`tcpi_rtt` (microseconds, the kernel's smoothed RTT) in Linux's `struct tcp_info`."""


class Sources:
    __slots__ = ("counts", "rtts", "enabled")

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}
        """Packed source address (4 or 16 bytes) -> queries."""
        self.rtts: dict[bytes, float] = {}
        """Packed address -> the latest TCP smoothed RTT to it, in milliseconds."""
        self.enabled = False
        """Set by the control plane (or a worker's setup) when latency measurement is on."""

    def note(self, packed: bytes, n: int = 1) -> None:
        counts = self.counts
        have = counts.get(packed)
        if have is not None:
            counts[packed] = have + n
        elif len(counts) < MAX_ADDRESSES:
            counts[packed] = n

    def note_host(self, host: str) -> None:
        try:
            packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%", 1)[0])
        except OSError:
            return
        self.note(packed)

    def note_sockaddr(self, addr: bytes, n: int) -> None:
        """A raw Linux sockaddr (from `_mmsg.recv`)."""
        self.note(addr[4:8] if addr[0] == socket.AF_INET else addr[8:24], n)

    def note_tcp(self, sock: socket.socket | None, host: str) -> None:
        """The kernel's smoothed RTT of a TCP connection from `host` (Linux only; nothing elsewhere)."""
        if sock is None or len(self.rtts) >= MAX_RTTS:
            return
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 104)
            packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%", 1)[0])
        except OSError:
            return
        if len(info) >= _RTT_OFFSET + 4:
            rtt_us = _RTT.unpack_from(info, _RTT_OFFSET)[0]
            if rtt_us:
                self.rtts[packed] = rtt_us / 1000.0

    def take(self) -> tuple[dict[bytes, int], dict[bytes, float]]:
        counts, rtts = self.counts, self.rtts
        self.counts, self.rtts = {}, {}
        return counts, rtts

    def merge(self, counts: dict[bytes, int], rtts: dict[bytes, float]) -> None:
        """A worker's take, into the parent's tallies (same bounds)."""
        for packed, n in list(counts.items())[:MAX_ADDRESSES]:
            if isinstance(packed, bytes) and len(packed) in (4, 16) and isinstance(n, int):
                self.note(packed, n)
        for packed, rtt in list(rtts.items())[:MAX_RTTS]:
            if isinstance(packed, bytes) and len(packed) in (4, 16) and isinstance(rtt, float) and len(self.rtts) < MAX_RTTS:
                self.rtts[packed] = rtt


SOURCES = Sources()
"""This process's tallies (one per process: the parent's also gets every worker's)."""
