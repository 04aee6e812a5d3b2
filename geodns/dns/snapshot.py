"""The Snapshot: everything the data plane needs, frozen and numbered.

The control plane builds one whenever zones, the GeoIP file, verdicts or
drains change, and swaps a single reference; answers in flight finish on the
old one. What a new snapshot carries over from the one it replaces
(`build_snapshot(previous=)`): its answer cache, when no answer could differ
(the same zones, latency tables, GeoIP reader, utilisation, measured RTTs and
up/forced state of every verdict: health republishes about once a second only
to move verdicts' time bounds). Its entries keep their own deadlines (set by
the old bounds) and the compiled zone they were made with, equal to the new
one by that test. Any other change starts an empty cache, so no stale answer
survives it. The steering memo (`steering`) is never carried over.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geodns.config.model import IPNetwork, Node, RRset, Steered, Zone
from geodns.dns.cache import AnswerCache
from geodns.geo import GeoDatabase
from geodns.steer import LatencyTable, RegionInfo, Verdicts
from geodns.steer.measured import Measured
from geodns.steer.verdict import region_is_up


@dataclass(frozen=True, slots=True)
class CompiledZone:
    zone: Zone
    nodes: Mapping[str, Node]
    """The zone's names, plus address records for in-zone name servers that only have glue."""
    labels: int
    """Number of labels in the origin."""
    existing: frozenset[str]
    """Every owner name and every empty non-terminal between it and the origin."""
    cuts: frozenset[str]
    """Delegation points below the apex."""
    regions: Mapping[str, RegionInfo]
    region_up: Mapping[str, bool]
    latency: LatencyTable | None
    narrowing: Mapping[int, tuple[IPNetwork, ...]]
    """CIDRs used by rules and tables, per IP version: an answer's scope never spans their edge."""
    narrowing_ints: Mapping[int, tuple[tuple[int, int], ...]]
    """The same CIDRs as (network, prefix length) integers, the form `narrow_int` takes per query."""
    narrowing_by_node: Mapping[str, Mapping[int, tuple[tuple[int, int], ...]]] = field(default_factory=dict)
    """Per steered node (by its name): the CIDRs of its own chain only, as integers. A name
    that is itself steered needs only these: another name's CIDR rule cannot change its
    answer, so its scope need not stop at that rule's edge (nor its queries check it)."""
    signer: Any = None
    """`geodns.dnssec.zone.ZoneSigner` when the zone has `dnssec:`; None otherwise."""
    latency_nodes: frozenset[str] = frozenset()
    """Steered names whose chain has a `latency` step: their answers may depend on the client's
    measured /24 (/48), so their scope is at least that (`geodns.steer.measured`)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the data plane reads, frozen; only `cache` and `steering` fill up as it answers."""

    generation: int
    zones: Mapping[str, CompiledZone]
    geo: GeoDatabase | None
    verdicts: Verdicts
    utilisation: Mapping[str, float] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    cache: AnswerCache = field(default_factory=AnswerCache, compare=False)
    """The answer cache: new, or the previous snapshot's when no answer could differ (see above)."""
    steering: dict = field(default_factory=dict, compare=False)
    """`geodns.steer.Context.memo`: steering outcomes that hold for this snapshot only (its
    verdicts' time bounds), never carried over with the cache. Keyed by the ids of the
    configuration objects they came from; each entry holds its object, so no id is reused
    while the entry lives."""
    signed: bool = False
    """Some zone is signed: queries with DO get answer-cache keys of their own (`answer`)."""
    measured: Measured | None = None
    """Measured RTTs from resolver networks to regions, ranked (`latency` reads them first)."""

    def find_zone(self, name: str) -> CompiledZone | None:
        """The zone that is authoritative for a name (longest origin match)."""
        zones = self.zones
        if name in zones:
            return zones[name]
        position = name.find(".")
        while position >= 0:
            suffix = name[position + 1 :]
            if suffix in zones:
                return zones[suffix]
            position = name.find(".", position + 1)
        return zones.get("")


def compile_zone(zone: Zone, verdicts: Verdicts, latency: LatencyTable | None) -> CompiledZone:
    origin = zone.origin
    existing = {origin}
    for name in zone.nodes:
        while name != origin and name not in existing:
            existing.add(name)
            name = name.split(".", 1)[1] if "." in name else origin
    for ns in zone.nameservers:
        if ns.name.endswith("." + origin):
            existing.add(ns.name)
    nodes = dict(zone.nodes)
    for ns in zone.nameservers:
        # An in-zone name server's glue is also its authoritative address (`dig ns1.zone A`).
        if ns.glue and ns.name not in nodes and (ns.name == origin or ns.name.endswith("." + origin)):
            rrsets = tuple(
                RRset(rtype, zone.ns_ttl, tuple(a for a in ns.glue if a.version == version))
                for rtype, version in (("A", 4), ("AAAA", 6))
                if any(a.version == version for a in ns.glue)
            )
            nodes[ns.name] = Node(name=ns.name, rrsets=rrsets, ttl=zone.ns_ttl)
    cuts = frozenset(
        name for name, node in zone.nodes.items() if name != origin and any(r.rtype == "NS" for r in node.rrsets)
    )
    regions = {name: RegionInfo.of(region) for name, region in zone.regions.items()}
    region_up = {name: region_is_up(info, verdicts) for name, info in regions.items()}
    networks: list[IPNetwork] = []
    by_node: dict[str, Mapping[int, tuple[tuple[int, int], ...]]] = {}
    for name, node in zone.nodes.items():
        if node.steered is None:
            continue
        own = _chain_cidrs(node.steered, latency)
        networks.extend(own)
        by_node[name] = {v: _as_ints(nets) for v, nets in _by_version(own).items()}
    narrowing = _by_version(networks)
    signer = None
    if zone.dnssec is not None:
        from geodns.dnssec.zone import ZoneSigner  # here: the signer builds on geodns.dns.resolve

        signer = ZoneSigner(zone, nodes, frozenset(existing), zone.dnssec.keys)
    return CompiledZone(
        zone=zone,
        nodes=nodes,
        labels=origin.count(".") + 1 if origin else 0,
        existing=frozenset(existing),
        cuts=cuts,
        regions=regions,
        region_up=region_up,
        latency=latency,
        narrowing=narrowing,
        narrowing_ints={v: _as_ints(nets) for v, nets in narrowing.items()},
        narrowing_by_node=by_node,
        signer=signer,
        latency_nodes=frozenset(
            name for name, node in zone.nodes.items()
            if node.steered is not None and any(step.kind == "latency" for step in node.steered.chain)
        ),
    )


def build_snapshot(
    generation: int,
    zones: list[Zone],
    geo: GeoDatabase | None,
    verdicts: Verdicts,
    latency_tables: Mapping[str, LatencyTable] | None = None,
    utilisation: Mapping[str, float] | None = None,
    cache_size: int = 200_000,
    previous: Snapshot | None = None,
    measured: Measured | None = None,
) -> Snapshot:
    """A new snapshot. Given the one it replaces, it keeps that one's answer cache when no
    answer could differ: same zones, GeoIP file, utilisation and up/forced state of every
    verdict. Health checking republishes about once a second only to move verdicts' `until`
    bounds forward; flushing the cache each time would turn every second into a miss storm.
    Cached answers still expire by their own deadline, which the old bounds set."""
    latency_tables = latency_tables or {}
    utilisation = dict(utilisation or {})
    compiled = {
        zone.origin: compile_zone(zone, verdicts, latency_tables.get(zone.origin)) for zone in zones
    }
    cache = None
    measured = measured if measured is not None and measured.rows else None
    if previous is not None and previous.measured == measured and _same_decisions(previous, compiled, geo, verdicts, utilisation):
        cache = previous.cache
    return Snapshot(
        generation=generation,
        zones=compiled,
        geo=geo,
        verdicts=dict(verdicts),
        utilisation=utilisation,
        cache=cache if cache is not None else AnswerCache(cache_size),
        signed=any(cz.signer is not None for cz in compiled.values()),
        measured=measured,
    )


def _states(verdicts: Verdicts) -> dict[str, tuple[bool, bool]]:
    return {target: (v.up, v.forced) for target, v in verdicts.items()}


def _same_decisions(
    previous: Snapshot, zones: Mapping[str, CompiledZone], geo: GeoDatabase | None, verdicts: Verdicts, utilisation: Mapping[str, float]
) -> bool:
    return (
        previous.geo is geo
        and previous.utilisation == utilisation
        and _states(previous.verdicts) == _states(verdicts)
        and previous.zones.keys() == zones.keys()
        and all(previous.zones[o].zone == z.zone and previous.zones[o].latency == z.latency for o, z in zones.items())
    )


def narrow(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int, networks: tuple[IPNetwork, ...]
) -> tuple[int, bool]:
    """Lengthen a scope prefix so that its network lies wholly inside or outside each CIDR.

    Returns the prefix and whether the address is inside one of the CIDRs (then
    the answer may depend on the address itself, not only on its location).
    The rule itself is `narrow_int`, which the hot path calls directly.
    """
    return narrow_int(int(address), address.max_prefixlen, prefix, _as_ints(networks))


def _chain_cidrs(steered: Steered, latency: LatencyTable | None) -> list[IPNetwork]:
    """The CIDRs a chain's steps match clients against (geolocation rules, the latency table)."""
    networks: list[IPNetwork] = []
    for step in steered.chain:
        if step.kind == "geolocation":
            for rule in step.params[0]:
                networks.extend(rule.networks)
        if step.kind == "latency" and latency is not None:
            networks.extend(latency.cidr_prefixes())
    return networks


def _by_version(networks: list[IPNetwork]) -> dict[int, tuple[IPNetwork, ...]]:
    """Per IP version, distinct, most specific first (`narrow` stops at the first overlap)."""
    return {
        4: tuple(sorted({n for n in networks if n.version == 4}, key=lambda n: -n.prefixlen)),
        6: tuple(sorted({n for n in networks if n.version == 6}, key=lambda n: -n.prefixlen)),
    }


def _as_ints(networks: tuple[IPNetwork, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((int(n.network_address), n.prefixlen) for n in networks)


def narrow_int(value: int, bits: int, prefix: int, nets: tuple[tuple[int, int], ...]) -> tuple[int, bool]:
    """`narrow` on integers: `nets` are (network, prefix) pairs, most specific first."""
    for net, plen in nets:
        shift = bits - (plen if plen < prefix else prefix)
        if value >> shift == net >> shift:
            break  # the scope network and this CIDR overlap: the rules below apply
    else:
        return prefix, False  # disjoint from every CIDR (nearly every client)
    inside = False
    for net, plen in nets:
        if value >> (bits - plen) == net >> (bits - plen):
            inside = True
            if plen > prefix:
                prefix = plen
            break
    for net, plen in nets:
        if plen <= prefix:
            break
        shift = bits - plen
        if value >> shift == net >> shift:
            continue
        common = bits - ((value ^ net) >> shift << shift).bit_length()
        if common < prefix:
            continue  # disjoint from the scope network
        # The scope network holds part of `net`: shrink it to the largest one that does not.
        prefix = max(prefix, min(common + 1, plen))
    return prefix, inside
