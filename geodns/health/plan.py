"""What to watch: zones compiled into targets, regions and probes (pure).

A target is a region's name, `region/address` for an endpoint, or
`region#balancer` for a region's balancer check (`geodns.steer.verdict`'s
`endpoint_target` and `balancer_target`). Probes are keyed by
(check, address): two records (or zones) using the same endpoint with the
same check share one probe, so a backend is probed at most once per interval
by this node however many names point at it.

With `check.observers = k`, only k of the cluster's N observers probe a key,
chosen by rendezvous hashing of (node name, key): every node computes the
same set from the same member list, and adding a node moves only ~1/N of the
keys.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from geodns.config.model import Check, Zone
from geodns.steer.verdict import balancer_target, endpoint_target

__all__ = ["ProbeKey", "TargetPlan", "RegionPlan", "Plan", "plan_zones", "choose_observers",
           "balancer_target"]

log = logging.getLogger("geodns.health")


@dataclass(frozen=True, slots=True)
class ProbeKey:
    """One probe: a check run against one address."""

    check: Check
    address: str

    def label(self) -> str:
        """Stable across nodes: the same config gives the same label."""
        c = self.check
        label = f"{c.kind}|{self.address}|{c.host}|{c.port}|{c.path}|{c.qname}|{' '.join(c.command)}"
        return label if c.url is None else f"{label}|{c.url}|{c.pool}"


@dataclass(frozen=True, slots=True)
class TargetPlan:
    target: str
    region: str
    key: ProbeKey | None
    """None: no check configured, the target is up unless drained."""
    observers: frozenset[str]
    """The nodes that probe it (every member unless `check.observers` limits it)."""


@dataclass(frozen=True, slots=True)
class RegionPlan:
    name: str
    endpoints: tuple[str, ...]
    min_healthy: int
    balancer: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    targets: dict[str, TargetPlan]
    """Endpoint and balancer targets."""
    regions: dict[str, RegionPlan]
    probes: dict[ProbeKey, tuple[str, ...]]
    """The probes this node runs, and the targets each one feeds."""

    def knows(self, target: str) -> bool:
        return target in self.regions or target in self.targets


def choose_observers(members: Sequence[str], key: str, k: int | None) -> frozenset[str]:
    """The k members that observe `key` (all of them when k is None or >= N)."""
    if k is None or k >= len(members):
        return frozenset(members)

    def score(member: str) -> bytes:
        return hashlib.sha256(f"{member}\0{key}".encode()).digest()

    return frozenset(sorted(members, key=score)[: max(k, 1)])


def plan_zones(zones: Sequence[Zone], node: str, members: Sequence[str]) -> Plan:
    targets: dict[str, TargetPlan] = {}
    regions: dict[str, RegionPlan] = {}
    seen_in: dict[str, str] = {}
    for zone in zones:
        for region in zone.regions.values():
            if region.name in regions:
                if seen_in[region.name] != zone.origin:
                    log.warning("health region=%s zone=%s ignored: already defined by zone %s",
                                region.name, zone.origin, seen_in[region.name])
                continue
            seen_in[region.name] = zone.origin
            names = []
            for ep in region.endpoints:
                target = endpoint_target(region.name, ep.address)
                check = ep.check or region.check
                key = ProbeKey(check, str(ep.address)) if check else None
                observers = choose_observers(members, key.label(), check.observers) if key and check \
                    else frozenset()
                targets[target] = TargetPlan(target, region.name, key, observers)
                names.append(target)
            bal = None
            if region.balancer is not None:
                bal = balancer_target(region.name)
                address = region.balancer.host or (str(region.endpoints[0].address) if region.endpoints else "")
                key = ProbeKey(region.balancer, address)
                targets[bal] = TargetPlan(bal, region.name, key,
                                          choose_observers(members, key.label(), region.balancer.observers))
            regions[region.name] = RegionPlan(region.name, tuple(names), region.min_healthy, bal)
    probes: dict[ProbeKey, list[str]] = {}
    for t in targets.values():
        if t.key is not None and node in t.observers:
            probes.setdefault(t.key, []).append(t.target)
    return Plan(targets, regions, {k: tuple(v) for k, v in probes.items()})
