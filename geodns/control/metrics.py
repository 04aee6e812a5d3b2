"""Prometheus metrics for one node, computed when scraped.

The data plane keeps plain counters (`geodns.dns.stats.Stats`, one dict
increment per query); this collector turns their export into metric families
only when Prometheus asks, so a query never touches prometheus-client. The
control-plane values (generation, reload failures, GeoIP age, region health)
are read from the controller at the same moment.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence

from dnslib import QTYPE
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from geodns.control.controller import Controller
from geodns.dns.stats import KNOWN_TYPES, LATENCY_BUCKETS
from geodns.dns.wire import Rcode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StatsSource = Callable[[], dict]
"""Returns `Stats.export()`, summed over the workers."""


def qtype_name(qtype: int) -> str:
    """The `type` label: a known type's name, `none` (no question), or `other` for any other
    number, so that clients cannot make a series per query type (`stats.type_key`)."""
    if not qtype:
        return "none"
    if qtype not in KNOWN_TYPES:
        return "other"
    return QTYPE.get(qtype, "other")


def rcode_name(rcode: int) -> str:
    try:
        return Rcode(rcode).name
    except ValueError:
        return str(rcode)


def transport_name(transport: object) -> str:
    """Stats key the transport as `udp: bool`; accept a name too."""
    if isinstance(transport, str):
        return transport
    return "udp" if transport else "tcp"


def region_counts(exported: dict) -> Tally:
    """Answers per region (a multi-region answer counts once for each region)."""
    counts: Tally = Tally()
    for (_zone, _rcode, regions, _step, _failopen), _qtype, _transport, n in exported.get("answers", ()):
        for region in filter(None, regions.split(",")):
            counts[region] += n
    return counts


class NodeCollector(Collector):
    """Reads controller and stats on each scrape."""

    def __init__(self, controller: Controller, stats: StatsSource | None = None) -> None:
        self.controller = controller
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._control()
        if self.stats is not None:
            yield from self._data(self.stats())

    def _control(self) -> Iterator[Metric]:
        c = self.controller
        g = GaugeMetricFamily("geodns_config_generation", "Generation number of the snapshot being served.")
        g.add_metric([], c.generation)
        yield g
        f = CounterMetricFamily("geodns_reload_failures", "Reloads refused because the new configuration was invalid.")
        f.add_metric([], c.reload_failures)
        yield f
        if c.ref is not None:
            snap = c.snapshot
            t = GaugeMetricFamily("geodns_snapshot_created_timestamp_seconds", "When the snapshot being served was built.")
            t.add_metric([], snap.created)
            yield t
            up = GaugeMetricFamily("geodns_region_up", "1 when the region may be answered (health verdicts and drains).", labels=["zone", "region"])
            for origin, czone in sorted(snap.zones.items()):
                for region, is_up in sorted(czone.region_up.items()):
                    up.add_metric([origin, region], 1.0 if is_up else 0.0)
            yield up
            forced = GaugeMetricFamily("geodns_target_forced_down", "1 for each target an operator drained or marked down.", labels=["target"])
            for target, verdict in sorted(snap.verdicts.items()):
                if verdict.forced and not verdict.up:
                    forced.add_metric([target], 1.0)
            yield forced
        geo = c.geo
        if geo is not None:
            age = GaugeMetricFamily("geodns_geoip_database_age_seconds", "Seconds since the GeoIP database was built (its build_epoch).", labels=["path", "type"])
            age.add_metric([str(geo.path), geo.database_type], max(0.0, time.time() - geo.build_epoch))
            yield age

    def _data(self, exported: dict) -> Iterator[Metric]:
        queries: Tally = Tally()
        answers: Tally = Tally()
        failopen: Tally = Tally()
        for (zone, rcode, regions, step, is_failopen), qtype, transport, n in exported.get("answers", ()):
            queries[(zone or "none", qtype_name(qtype), rcode_name(rcode), transport_name(transport))] += n
            for region in filter(None, regions.split(",")):
                answers[(zone, region, step or "none")] += n
            if is_failopen:
                failopen[zone] += n
        q = CounterMetricFamily("geodns_queries", "DNS queries answered, by zone, type, rcode and transport.", labels=["zone", "type", "rcode", "transport"])
        for labels, n in sorted(queries.items()):
            q.add_metric(list(labels), n)
        yield q
        a = CounterMetricFamily("geodns_answers", "Steered answers, by region answered and the step that decided.", labels=["zone", "region", "step"])
        for labels, n in sorted(answers.items()):
            a.add_metric(list(labels), n)
        yield a
        fo = CounterMetricFamily("geodns_failopen_answers", "Answers that failed open: every candidate was down.", labels=["zone"])
        for zone, n in sorted(failopen.items()):
            fo.add_metric([zone], n)
        yield fo
        latency = list(exported.get("latency") or [0] * (len(LATENCY_BUCKETS) + 1))
        buckets, total = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), latency, strict=False):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        h = HistogramMetricFamily("geodns_answer_latency_seconds", "Time to compute an answer (data plane only, no socket time).")
        h.add_metric([], buckets, exported.get("latency_sum", 0.0))
        yield h
        hits = CounterMetricFamily("geodns_cache_hits", "Answer cache hits.")
        hits.add_metric([], exported.get("cache_hits", 0))
        yield hits
        misses = CounterMetricFamily("geodns_cache_misses", "Answer cache misses.")
        misses.add_metric([], exported.get("cache_misses", 0))
        yield misses
        rrl = CounterMetricFamily(
            "geodns_rrl_responses",
            "UDP responses response rate limiting dropped, slipped (sent truncated, TC=1) or, in log-only mode, "
            "would have limited (logged), by response class.",
            labels=["action", "class"],
        )
        for action, cls, n in sorted(exported.get("rrl", ())):
            rrl.add_metric([action, cls], n)
        yield rrl
        yield from _dnssec(exported.get("dnssec") or {})


def _dnssec(signing: dict) -> Iterator[Metric]:
    """Signed zones: how long until the first signature being served expires (alert well
    before 0: normally 6-8 days, since signatures are renewed daily), and signing work."""
    expiry = GaugeMetricFamily(
        "geodns_dnssec_signature_expiry_seconds",
        "Seconds until the earliest expiration of an RRSIG this node serves, per signed zone.",
        labels=["zone"],
    )
    made = CounterMetricFamily("geodns_dnssec_signatures", "RRSIGs made (private-key operations), per signed zone.", labels=["zone"])
    entries = GaugeMetricFamily("geodns_dnssec_signature_cache_entries", "Signed RRsets held in the signature caches.", labels=["zone"])
    now = time.time()
    for zone, (expires, count, held) in sorted(signing.items()):
        if expires is not None:
            expiry.add_metric([zone], expires - now)
        made.add_metric([zone], count)
        entries.add_metric([zone], held)
    yield expiry
    yield made
    yield entries


class _Forward(Collector):
    """Another registry's metrics (process metrics, the health service's) in ours."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


def node_registry(
    controller: Controller,
    stats: StatsSource | None = None,
    include: Sequence[CollectorRegistry] = (REGISTRY,),
) -> CollectorRegistry:
    """A registry of our own: the node's collector plus `include` (by default the
    process-wide one, where the health service and process metrics live)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(controller, stats))
    for other in include:
        registry.register(_Forward(other))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
