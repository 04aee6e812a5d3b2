"""Prometheus metrics of one balancer, in its own CollectorRegistry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "geodns_balance_requests", "Requests answered, by route, backend and status",
            ["route", "backend", "status"], registry=r,
        )
        self.latency = Histogram(
            "geodns_balance_request_duration_seconds",
            "Time from request to the end of the response, by route",
            ["route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
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
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def observe(self, route: str, backend: str, status: int, seconds: float) -> None:
        # Labelled children are cached: .labels() costs more than the increment.
        key = (route, backend, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, backend, str(status))
        child.inc()
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = self.latency.labels(route)
        hist.observe(seconds)


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
