"""Counters the data plane keeps per worker, read by the control plane's /metrics.

The hot path does one dict increment per query, keyed by a tuple the answer
cache prepared in advance (zone, rcode, regions, deciding step, fail-open),
plus the query type and transport; the exporter aggregates the tuple into
the metric families. `export()` is plain data, so workers can send it over a
pipe.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

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


class Stats:
    __slots__ = ("answers", "latency", "latency_sum", "cache_hits", "cache_misses")

    def __init__(self) -> None:
        self.answers: Counter = Counter()
        """(AnswerLabel, qtype, transport) -> count."""
        self.latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.cache_hits = 0
        self.cache_misses = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def observe_latency_n(self, seconds: float, n: int) -> None:
        """`n` queries answered together (one batch) in `seconds`."""
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += n
        self.latency_sum += seconds * n

    def export(self) -> dict:
        return {
            "answers": [
                ((label.zone, label.rcode, label.regions, label.step, label.failopen), qtype, transport, n)
                for (label, qtype, transport), n in self.answers.items()
            ],
            "latency": list(self.latency),
            "latency_sum": self.latency_sum,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }
