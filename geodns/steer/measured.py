"""Measured latency: each resolver network's regions, ranked by the RTT the nodes measured.

The control plane (`geodns.health.rtt`, `geodns.control.latency_probe`) measures,
exchanges and ranks; the data plane only reads the `Measured` value in the snapshot.
A network is an IPv4 /24 or an IPv6 /48, held as one integer key (`network_key`)
so that the answer path finds a client's row with one dict lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from geodns.config.model import IPAddress

V4_PREFIX = 24
V6_PREFIX = 48
V6_FLAG = 1 << 48
"""Set in the key of an IPv6 network (an IPv4 key has 24 bits, an IPv6 one 48 plus this)."""

Ranking = tuple[tuple[str, float], ...]
"""(region, smoothed RTT in ms), best first (hysteresis applied: the leader may not be the fastest
by less than the margin)."""


def network_key(version: int, value: int) -> int:
    """The key of the /24 (IPv4) or /48 (IPv6) holding an address given as an integer."""
    return value >> 8 if version == 4 else (value >> 80) | V6_FLAG


def key_of(address: IPAddress) -> int:
    return network_key(address.version, int(address))


def prefix_of(key: int) -> int:
    """The prefix length of a key's network (24 or 48)."""
    return V6_PREFIX if key & V6_FLAG else V4_PREFIX


def network_text(key: int) -> str:
    """`192.0.2.0/24` or `2001:db8:1::/48`."""
    if key & V6_FLAG:
        return f"{ipaddress.IPv6Address((key ^ V6_FLAG) << 80)}/{V6_PREFIX}"
    return f"{ipaddress.IPv4Address(key << 8)}/{V4_PREFIX}"


def parse_network(text: str) -> int:
    """The key of `192.0.2.0/24` or `2001:db8:1::/48` (exactly those lengths). Raises ValueError."""
    network = ipaddress.ip_network(text, strict=True)
    expected = V4_PREFIX if network.version == 4 else V6_PREFIX
    if network.prefixlen != expected:
        raise ValueError(f"{text}: expected a /{expected}")
    return key_of(network.network_address)


@dataclass(frozen=True, slots=True)
class Measured:
    """Every ranked network, as the snapshot carries it."""

    rows: Mapping[int, Ranking] = field(default_factory=dict)
    """Network key -> its ranking."""
    hysteresis: str = ""
    """The margin the ranking was made with, for explanations (`10% or 5 ms`)."""

    def lookup(self, address: IPAddress | None) -> tuple[Ranking, int] | None:
        """The ranking of the address's network and that network's key, or None."""
        if address is None:
            return None
        key = network_key(address.version, int(address))
        row = self.rows.get(key)
        return None if row is None else (row, key)

    def __len__(self) -> int:
        return len(self.rows)
