"""Prometheus metrics of one balancer, in its own CollectorRegistry."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Metric
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Upper bounds of the request-duration histogram, in seconds."""


class RequestStats:
    """Requests by (route, backend, status) and their durations by route, counted in plain
    dicts and lists, and collected into Prometheus families when scraped.

    Every proxied request updates these; prometheus_client's Counter and Histogram take
    a lock per update (about 2 us a request between them), this takes none: the event
    loop is the only writer, and a scrape runs on the same loop."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, list[float]] = {}
        """Per route: a count per bucket (one more for +Inf), then the sum."""

    def observe(self, route: str, backend: str, status: int, seconds: float) -> None:
        key = (route, backend, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        hist = self.durations.get(route)
        if hist is None:
            hist = self.durations[route] = [0.0] * (len(BUCKETS) + 2)
        hist[bisect_left(BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def collect(self) -> list[Metric]:
        requests = CounterMetricFamily(
            "geodns_balance_requests", "Requests answered, by route, backend and status",
            labels=["route", "backend", "status"],
        )
        for (route, backend, status), n in self.counts.items():
            requests.add_metric([route, backend, str(status)], n)
        latency = HistogramMetricFamily(
            "geodns_balance_request_duration_seconds",
            "Time from request to the end of the response, by route", labels=["route"],
        )
        for route, hist in self.durations.items():
            cumulative, buckets = 0.0, []
            for bound, n in zip((*map(floatToGoString, BUCKETS), "+Inf"), hist, strict=False):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, hist[-1])
        return [requests, latency]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stats = RequestStats()
        r.register(self.stats)
        self.retries = Counter(
            "geodns_balance_retries", "Requests sent again to another backend", ["route"], registry=r
        )
        self.trips = Counter(
            "geodns_balance_circuit_trips", "Circuit-breaker trips (passive checks)",
            ["pool", "backend"], registry=r,
        )
        self.backend_up = Gauge(
            "geodns_balance_backend_up", "1 when the backend takes new requests",
            ["pool", "backend"], registry=r,
        )
        self.in_flight = Gauge(
            "geodns_balance_in_flight", "Requests in flight to backends", registry=r
        )
        self.reloads = Counter(
            "geodns_balance_reloads", "Configuration reloads, by result", ["result"], registry=r
        )
        self.observe = self.stats.observe


Family = dict[str, Any]
"""One collected metric family as JSON, for the trip from a worker to its parent:
`{"name", "type", "help", "unit", "samples": [[name, labels, value], ...]}`."""


def families(registry: CollectorRegistry) -> list[Family]:
    """The registry's collected families, as JSON."""
    return [
        {"name": m.name, "type": m.type, "help": m.documentation, "unit": m.unit,
         "samples": [[s.name, s.labels, s.value] for s in m.samples]}
        for m in registry.collect()
    ]


class Collected:
    """Metric families collected elsewhere, exposed through prometheus_client's own
    text writer (`generate_latest(Collected(...))`), which escapes HELP and labels."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics
