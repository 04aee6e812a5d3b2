"""Backend choosers: pure, I/O-free, unit-tested.

A chooser is built once from the pool's full membership (so hash-based ones
stay stable when a backend goes down and comes back) and is then asked, per
request, to pick one of the backends that are available right now:

    chooser.choose(available, key) -> Target | None

`available` holds the live backends (not down, not draining, not full, not
already tried for this request); a `Target` is anything with `key`, `weight`
and `in_flight`. `key` is the hashing key (client address, header or cookie
value) for the hash choosers and ignored by the others. Choosers keep only
their own rotation state; no clocks, no sockets, no randomness.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class Target(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def in_flight(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Member:
    """One backend as the pool's configuration declares it."""

    key: str
    """Stable identity, `host:port`."""
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Candidate:
    """A plain Target, for tests and callers without live state."""

    key: str
    weight: int = 1
    in_flight: int = 0


T = TypeVar("T", bound=Target)

ALGORITHMS = (
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "ip_hash",
    "consistent_hash",
)


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class RoundRobin:
    """Plain rotation over the available backends, weights ignored."""

    def __init__(self, members: Sequence[Member] = ()) -> None:
        self._next = 0

    def choose(self, available: Sequence[T], key: str | None = None) -> T | None:
        if not available:
            return None
        pick = available[self._next % len(available)]
        self._next += 1
        return pick


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer).

    Each pick adds every candidate's weight to its current value, takes the
    largest, and subtracts the total from the winner. Weights 5,1,1 give
    a a b a c a a rather than a a a a a b c, so a heavy backend never gets a
    burst. Backends not available this time simply do not take part.
    """

    def __init__(self, members: Sequence[Member] = ()) -> None:
        self._current: dict[str, int] = {}

    def choose(self, available: Sequence[T], key: str | None = None) -> T | None:
        best: T | None = None
        best_current = 0
        total = 0
        current = self._current
        for target in available:
            value = current.get(target.key, 0) + target.weight
            current[target.key] = value
            total += target.weight
            if best is None or value > best_current:
                best, best_current = target, value
        if best is not None:
            current[best.key] = best_current - total
        return best


class LeastConnections:
    """Weighted least connections: smallest in_flight / weight.

    Ties (common at low load, where everything has 0 in flight) are broken by
    smooth weighted round robin among the tied backends, as nginx's
    least_conn does, so that light sequential traffic still follows weights.
    """

    def __init__(self, members: Sequence[Member] = ()) -> None:
        self._tiebreak = SmoothWeightedRoundRobin()

    def choose(self, available: Sequence[T], key: str | None = None) -> T | None:
        tied: list[T] = []
        best: T | None = None
        for target in available:
            if best is None:
                best, tied = target, [target]
                continue
            # in_flight/weight compared without division: a/wa < b/wb <=> a*wb < b*wa
            left = target.in_flight * best.weight
            right = best.in_flight * target.weight
            if left < right:
                best, tied = target, [target]
            elif left == right:
                tied.append(target)
        if len(tied) <= 1:
            return best
        return self._tiebreak.choose(tied)


class IPHash:
    """Client address hashed onto the weighted member list (nginx ip_hash).

    The slot table is built from the full membership, so a client keeps its
    backend while other backends come and go. When its backend is not
    available, the key is rehashed (up to 20 times, as nginx does) and then
    the table is walked from the original slot.
    """

    REHASH = 20

    def __init__(self, members: Sequence[Member]) -> None:
        self._slots: list[str] = [m.key for m in members for _ in range(max(m.weight, 0))]

    def choose(self, available: Sequence[T], key: str | None = None) -> T | None:
        if not available:
            return None
        if not self._slots:
            return available[0]
        by_key = {t.key: t for t in available}
        seed = key or ""
        n = len(self._slots)
        for attempt in range(self.REHASH):
            slot = _hash64(seed if attempt == 0 else f"{seed}#{attempt}") % n
            target = by_key.get(self._slots[slot])
            if target is not None:
                return target
        start = _hash64(seed) % n
        for i in range(n):
            target = by_key.get(self._slots[(start + i) % n])
            if target is not None:
                return target
        return available[0]


class BoundedConsistentHash:
    """Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam 2016).

    A ring of virtual nodes (`vnodes` per unit of weight) maps a key to a
    backend; walking clockwise from the key's point, the first available
    backend whose load after this request stays within
    `ceil(load_factor * (total_in_flight + 1) * weight / total_weight)` wins.
    Keys therefore stay on their backend until it is loaded `load_factor`
    times above its fair share, and a single hot key spills over to the next
    backends on the ring instead of swamping one. This is what HAProxy's
    `hash-balance-factor` and Envoy's ring hash with bounded load do.
    """

    def __init__(
        self, members: Sequence[Member], load_factor: float = 1.25, vnodes: int = 100
    ) -> None:
        if load_factor < 1.0:
            raise ValueError("load_factor must be >= 1.0")
        self.load_factor = load_factor
        points: list[tuple[int, str]] = []
        for member in members:
            for i in range(max(member.weight, 0) * vnodes):
                points.append((_hash64(f"{member.key}-{i}"), member.key))
        points.sort()
        self._points = [p for p, _ in points]
        self._owners = [k for _, k in points]
        # Distinct owners in ring order from each point would be faster to walk;
        # the ring is walked only until an acceptable backend, usually 1-3 steps.

    def choose(self, available: Sequence[T], key: str | None = None) -> T | None:
        if not available:
            return None
        if not self._points:
            return available[0]
        by_key = {t.key: t for t in available}
        total_load = sum(t.in_flight for t in available) + 1
        total_weight = sum(t.weight for t in available) or 1
        n = len(self._points)
        start = bisect.bisect_left(self._points, _hash64(key or ""))
        seen: set[str] = set()
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner in seen:
                continue
            seen.add(owner)
            target = by_key.get(owner)
            if target is None:
                continue
            bound = math.ceil(self.load_factor * total_load * target.weight / total_weight)
            if target.in_flight + 1 <= bound:
                return target
            if len(seen) >= len(by_key) and all(k in seen for k in by_key):
                break
        # Everyone above the bound (only possible with tiny weights): least loaded.
        return min(available, key=lambda t: t.in_flight / max(t.weight, 1))


Chooser = RoundRobin | SmoothWeightedRoundRobin | LeastConnections | IPHash | BoundedConsistentHash


def make_chooser(algorithm: str, members: Sequence[Member], load_factor: float = 1.25) -> Chooser:
    """Build the chooser named in a pool or route's `algorithm`."""
    if algorithm == "round_robin":
        return RoundRobin(members)
    if algorithm == "weighted_round_robin":
        return SmoothWeightedRoundRobin(members)
    if algorithm == "least_conn":
        return LeastConnections(members)
    if algorithm == "ip_hash":
        return IPHash(members)
    if algorithm == "consistent_hash":
        return BoundedConsistentHash(members, load_factor=load_factor)
    raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
