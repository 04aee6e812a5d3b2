"""Counters the data plane keeps per worker, read by the control plane's /metrics.

The hot path does one dict increment per query, keyed by a tuple the answer
cache prepared in advance (zone, rcode, regions, deciding step, fail-open),
plus the query type and transport; the exporter aggregates the tuple into
the metric families. `export()` is plain data, so workers can send it over a
pipe.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass

from dnslib import QTYPE

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


@dataclass(frozen=True, slots=True)
class AnswerLabel:
    """What one prepared answer is, for metrics and logs."""

    zone: str
    rcode: int
    regions: str
    """Comma-separated regions answered ('' for answers that are not steered)."""
    step: str
    """The step that decided it ('' when not steered)."""
    failopen: bool = False


NO_ZONE = AnswerLabel("", 5, "", "")

KNOWN_TYPES = frozenset(QTYPE.forward) | {0}
"""Query types counted by their own number (dnslib's table of named types, ~50; 0 for the
messages that had none): a client picks the qtype, so any other is counted as OTHER_TYPE,
or each of 65,536 numbers would become a counter here and a Prometheus series."""
OTHER_TYPE = -1


def type_key(qtype: int) -> int:
    """The query type as counted: itself when known, else OTHER_TYPE."""
    return qtype if qtype in KNOWN_TYPES else OTHER_TYPE

class SlotTable:
    """Small ints standing for (AnswerLabel, qtype, transport) keys, owned by one `Stats`.

    Counting by tuple costs ~1.1 us per query (the tuple and the dataclass in it
    are hashed twice, in Python); by int, 0.06 us: a fifth of the hot path.
    The answer cache keeps the int beside each prepared answer, together with
    the table it belongs to (`Prepared.slot_table`, the level-0 entry's last
    item): an int is only meaningful in its own table.
    """

    __slots__ = ("_index", "keys")

    def __init__(self) -> None:
        self._index: dict[tuple, int] = {}
        self.keys: list[tuple] = []
        """slot -> the key it stands for, with the query type folded (`type_key`)."""

    def slot(self, key: tuple) -> int:
        index = self._index.get(key)
        if index is None:
            label, qtype, transport = key
            folded = (label, type_key(qtype), transport)
            index = self._index.get(folded)
            if index is None:
                index = self._index[folded] = len(self.keys)
                self.keys.append(folded)
        return index


class Stats:
    """One process's counters. The transports of a server share one; the answer path counts
    into whichever it is given."""

    __slots__ = ("answers", "counts", "slots", "latency", "latency_sum", "cache_hits", "cache_misses", "rrl", "internal_errors")

    def __init__(self) -> None:
        self.answers: Counter = Counter()
        """(AnswerLabel, qtype, transport) -> count, for callers that count by key."""
        self.counts: defaultdict[int, int] = defaultdict(int)
        """`slots.slot(key)` -> count: what the hot path increments."""
        self.slots = SlotTable()
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.cache_hits = 0
        self.cache_misses = 0
        self.rrl: dict[tuple[str, str], int] = {}
        """(action, response class) -> responses rate limiting dropped, slipped or (log-only) let through."""
        self.internal_errors = 0
        """Queries answered SERVFAIL because answering raised (a bug): the log says the first
        ten, then every thousandth."""

    def observe_latency(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def observe_latency_n(self, seconds: float, n: int) -> None:
        """`n` queries answered together (one batch) in `seconds`."""
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += n
        self.latency_sum += seconds * n

    def count(self, key: tuple) -> None:
        self.counts[self.slots.slot(key)] += 1

    def count_error(self, label: AnswerLabel, qtype: int, udp: bool) -> None:
        """An answer made without a prepared body (REFUSED, SERVFAIL, FORMERR, ...)."""
        self.answers[(label, type_key(qtype), udp)] += 1

    def totals(self) -> Counter:
        """(AnswerLabel, qtype, transport) -> count, whichever way it was counted."""
        totals = Counter(self.answers)
        keys = self.slots.keys
        for index, n in list(self.counts.items()):
            if n:
                totals[keys[index]] += n
        return totals

    def export(self) -> dict:
        return {
            "answers": [
                ((label.zone, label.rcode, label.regions, label.step, label.failopen), qtype, transport, n)
                for (label, qtype, transport), n in self.totals().items()
            ],
            "latency": list(self.latency),
            "latency_sum": self.latency_sum,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
            "rrl": [(action, cls, n) for (action, cls), n in self.rrl.items()],
            "dnssec": _signing_status(),
        }


def _signing_status() -> dict:
    """Signature expiry and counts of this process's signed zones (`geodns.dnssec.zone`);
    empty when nothing was ever signed here (the module is not even imported then)."""
    import sys

    zone = sys.modules.get("geodns.dnssec.zone")
    return zone.signing_status() if zone is not None else {}
