"""Latency measurement, without I/O: which resolver networks to measure, their smoothed RTT
per region, and the ranking with hysteresis that the `latency` step reads.

Everything takes `now` as an argument and reads no clock, file or socket
(`geodns.control.latency_probe` does those). Networks are the integer keys of
`geodns.steer.measured` (an IPv4 /24 or an IPv6 /48).

Memory is bounded: `TopNetworks` holds at most `capacity * 1.25` networks, a
`ProbeSchedule` only the networks it is given, and `Estimates` at most its
`capacity` (the oldest go first).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from geodns.steer.measured import Measured, Ranking

__all__ = [
    "Estimate",
    "Hysteresis",
    "ProbeSchedule",
    "TopNetworks",
    "Estimates",
    "smooth",
    "rank",
    "rank_rows",
    "best_per_region",
]


# ---- which networks ---------------------------------------------------------------------


class TopNetworks:
    """The networks that query this node most, by query count decayed with a half-life.

    Counts are kept forward-decayed (each count is scaled by 2^((t - t0) / half_life) when
    added), so nothing is touched as time passes; past `capacity * 1.25` entries the lowest
    are pruned to `capacity` at once (amortised: a flood of new networks costs a sort every
    `capacity / 4` of them, and each new one starts with the least count of all).
    """

    def __init__(self, capacity: int, half_life: float = 600.0, now: float = 0.0) -> None:
        self.capacity = capacity
        self.half_life = half_life
        self._t0 = now
        self._scores: dict[int, float] = {}
        self._addresses: dict[int, int] = {}
        """Network -> the last address seen in it (what a probe is sent to), as an integer."""

    def add(self, key: int, address: int, count: float, now: float) -> None:
        exponent = (now - self._t0) / self.half_life
        if exponent > 60:  # rescale before the weights overflow
            self._rescale(now)
            exponent = 0.0
        self._scores[key] = self._scores.get(key, 0.0) + count * 2.0**exponent
        self._addresses[key] = address
        if len(self._scores) > self.capacity + max(16, self.capacity // 4):
            self._prune()

    def _rescale(self, now: float) -> None:
        factor = 2.0 ** (-(now - self._t0) / self.half_life)
        self._scores = {k: v * factor for k, v in self._scores.items() if v * factor > 1e-9}
        self._addresses = {k: self._addresses[k] for k in self._scores}
        self._t0 = now

    def _prune(self) -> None:
        keep = heapq.nlargest(self.capacity, self._scores.items(), key=lambda kv: kv[1])
        self._scores = dict(keep)
        self._addresses = {k: self._addresses[k] for k in self._scores}

    def count(self, key: int, now: float) -> float:
        """The decayed query count of a network as of `now`."""
        return self._scores.get(key, 0.0) * 2.0 ** (-(now - self._t0) / self.half_life)

    def top(self) -> list[int]:
        """At most `capacity` networks, most queried first."""
        items = heapq.nlargest(self.capacity, self._scores.items(), key=lambda kv: kv[1])
        return [k for k, _ in items]

    def address(self, key: int) -> int | None:
        return self._addresses.get(key)

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, key: int) -> bool:
        return key in self._scores


# ---- when to probe ------------------------------------------------------------------------


@dataclass(slots=True)
class _ProbeState:
    due: float
    failures: int = 0


class ProbeSchedule:
    """When each network may be probed next: never twice within `interval`, and a network
    that does not answer backs off (interval × 2^failures, at most `max_backoff`)."""

    def __init__(self, interval: float, max_backoff: float = 86400.0) -> None:
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self._states: dict[int, _ProbeState] = {}
        self._heap: list[tuple[float, int]] = []

    def sync(self, keys: Iterable[int], now: float) -> None:
        """Measure exactly these networks from now on (new ones are due at once)."""
        wanted = set(keys)
        for key in list(self._states):
            if key not in wanted:
                del self._states[key]
        for key in wanted:
            if key not in self._states:
                self._states[key] = _ProbeState(now)
                heapq.heappush(self._heap, (now, key))
        if len(self._heap) > 4 * len(self._states) + 64:  # drop stale heap entries
            self._heap = [(s.due, k) for k, s in self._states.items()]
            heapq.heapify(self._heap)

    def next_due(self, now: float) -> int | None:
        """The network most overdue for a probe, marked as probed now; None if none is due."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            state = self._states.get(key)
            if state is None or state.due != due:
                continue  # replaced or dropped
            self._reschedule(key, state, now + self.interval)
            return key
        return None

    def answered(self, key: int, sent: float) -> None:
        state = self._states.get(key)
        if state is not None:
            state.failures = 0

    def unanswered(self, key: int, sent: float) -> None:
        state = self._states.get(key)
        if state is not None:
            state.failures += 1
            backoff = min(self.max_backoff, self.interval * 2.0 ** min(state.failures, 30))
            self._reschedule(key, state, sent + backoff)

    def failures(self, key: int) -> int:
        state = self._states.get(key)
        return state.failures if state is not None else 0

    def _reschedule(self, key: int, state: _ProbeState, due: float) -> None:
        state.due = due
        heapq.heappush(self._heap, (due, key))

    def __len__(self) -> int:
        return len(self._states)


# ---- how far -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    """A smoothed RTT to one network from one region."""

    rtt: float
    """Milliseconds, smoothed."""
    at: float
    """When the last sample came (epoch seconds)."""
    samples: int = 1


SMOOTHING = 0.3
"""Weight of a new sample (RFC 6298 uses 1/8 for retransmission timers; steering wants a moved
network to move within a few probes)."""


def smooth(previous: Estimate | None, sample_ms: float, at: float, weight: float = SMOOTHING) -> Estimate:
    if previous is None:
        return Estimate(sample_ms, at, 1)
    return Estimate(previous.rtt + weight * (sample_ms - previous.rtt), max(at, previous.at), previous.samples + 1)


class Estimates:
    """This node's smoothed RTT per network, at most `capacity`, dropped after `expiry` seconds."""

    def __init__(self, capacity: int, expiry: float) -> None:
        self.capacity = capacity
        self.expiry = expiry
        self.rows: dict[int, Estimate] = {}
        self.addresses: dict[int, int] = {}

    def sample(self, key: int, address: int, sample_ms: float, at: float) -> Estimate:
        estimate = self.rows[key] = smooth(self.rows.pop(key, None), sample_ms, at)  # re-inserted: newest last
        self.addresses[key] = address
        while len(self.rows) > self.capacity:
            oldest = next(iter(self.rows))
            del self.rows[oldest]
            self.addresses.pop(oldest, None)
        return estimate

    def expire(self, now: float) -> int:
        old = [k for k, e in self.rows.items() if now - e.at > self.expiry]
        for key in old:
            del self.rows[key]
            self.addresses.pop(key, None)
        return len(old)

    def fresh(self, now: float) -> dict[int, Estimate]:
        return {k: e for k, e in self.rows.items() if now - e.at <= self.expiry}


# ---- which region ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """A challenger must beat the current leader by more than max(percent of the leader's RTT, ms)."""

    percent: float = 10.0
    ms: float = 5.0

    def margin(self, leader_rtt: float) -> float:
        return max(self.percent / 100.0 * leader_rtt, self.ms)

    def describe(self) -> str:
        return f"{self.percent:g}% or {self.ms:g} ms"

    @classmethod
    def parse(cls, value: object) -> Hysteresis:
        """`10%`, `5ms`, a number (ms), or a list of those (the larger margin wins). Raises ValueError."""
        items = value if isinstance(value, list) else [value]
        percent = ms = 0.0
        if not items:
            raise ValueError("expected a margin such as 10% or 5ms")
        for item in items:
            if isinstance(item, bool):
                raise ValueError(f"{item!r} is not a margin (10%, 5ms)")
            if isinstance(item, int | float):
                number, unit = float(item), "ms"
            elif isinstance(item, str) and item.strip().endswith("%"):
                number, unit = _number(item.strip()[:-1]), "%"
            elif isinstance(item, str) and item.strip().endswith("ms"):
                number, unit = _number(item.strip()[:-2]), "ms"
            else:
                raise ValueError(f"{item!r} is not a margin (10%, 5ms)")
            if not math.isfinite(number) or number < 0 or (unit == "%" and number > 1000) or (unit == "ms" and number > 60000):
                raise ValueError(f"{item!r}: out of range")
            if unit == "%":
                percent = number
            else:
                ms = number
        return cls(percent, ms)


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def best_per_region(
    rows: Iterable[tuple[str, Mapping[int, Estimate]]], now: float, expiry: float
) -> dict[int, dict[str, Estimate]]:
    """Network -> region -> the lowest fresh estimate any node of that region reported.

    `rows`: (region, that node's estimates) per node, this one included. Two nodes in one
    region both speak for it; the nearer one's figure is the region's."""
    out: dict[int, dict[str, Estimate]] = {}
    for region, estimates in rows:
        for key, estimate in estimates.items():
            if now - estimate.at > expiry:
                continue
            regions = out.setdefault(key, {})
            have = regions.get(region)
            if have is None or estimate.rtt < have.rtt:
                regions[region] = estimate
    return out


def rank(
    networks: Mapping[int, Mapping[str, Estimate]],
    previous: Measured | None,
    hysteresis: Hysteresis,
) -> Measured:
    """Each network's regions, fastest first, except that the previous leader stays first until
    another region is faster by more than the margin (so two close regions do not flap)."""
    rows = rank_rows(networks, previous.rows if previous is not None else {}, hysteresis)
    return Measured(rows, hysteresis.describe())


def rank_rows(
    networks: Mapping[int, Mapping[str, Estimate]], before: Mapping[int, Ranking], hysteresis: Hysteresis
) -> dict[int, Ranking]:
    """`rank` for some networks only (those whose figures changed), against their previous rows."""
    rows: dict[int, Ranking] = {}
    for key, regions in networks.items():
        if not regions:
            continue
        order = sorted(((round(e.rtt, 1), name) for name, e in regions.items()))
        ranking: list[tuple[str, float]] = [(name, rtt) for rtt, name in order]
        old = before.get(key)
        if old and ranking[0][0] != old[0][0]:
            leader = old[0][0]
            held = next((i for i, (name, _) in enumerate(ranking) if name == leader), None)
            if held is not None and ranking[held][1] - ranking[0][1] <= hysteresis.margin(ranking[held][1]):
                ranking.insert(0, ranking.pop(held))
        rows[key] = tuple(ranking)
    return rows


def leaders_changed(a: Measured | None, b: Measured | None) -> bool:
    """Whether two rankings could answer differently (other orders or other networks)."""
    ra = a.rows if a is not None else {}
    rb = b.rows if b is not None else {}
    if ra.keys() != rb.keys():
        return True
    return any(tuple(n for n, _ in ra[k]) != tuple(n for n, _ in rb[k]) for k in ra)
