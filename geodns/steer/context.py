"""What a steering step may look at: the client, the regions, verdicts, tables."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from geodns.config.model import IPAddress, IPNetwork, Region
from geodns.geo import Location, unit_vector
from geodns.steer.latency_table import LatencyTable
from geodns.steer.measured import Measured
from geodns.steer.verdict import Verdicts, balancer_target, endpoint_target

Candidates = tuple[str, ...]
"""Region names, in preference order."""


# Client and Context are built once per steering run (every new place in a cache-miss
# storm): plain slotted dataclasses, like the query types in geodns.dns.wire, because
# frozen ones pay object.__setattr__ per field (~7x slower for Context's ten). No step
# may change them.


@dataclass(slots=True)
class Client:
    """The client as steering sees it: the address it was located by, and where that is."""

    address: IPAddress | None
    location: Location | None
    prefix: int | None
    """Prefix length of the GeoIP network the address fell into (narrowed by CIDR rules); the ECS scope."""
    source: str = "source address"
    """`ECS` or `source address`: what the address came from."""
    resolver: IPAddress | None = None
    """With ECS: the sender (the resolver), when measured RTTs to its network may steer the
    client (its ECS network was not measured); None otherwise."""

    @property
    def network(self) -> IPNetwork | None:
        """That network. Built on demand: constructing it costs more than a steering step."""
        if self.address is None or self.prefix is None:
            return None
        return network_of(self.address, self.prefix)


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """A region compiled for the hot path: unit vector, addresses by family."""

    region: Region
    vector: tuple[float, float, float]
    addresses: Mapping[int, tuple[IPAddress, ...]]
    """IP version -> endpoint addresses of that family, in configured order."""
    endpoint_targets: Mapping[IPAddress, str] = field(default_factory=dict)
    """Endpoint address -> its verdict's target name (formatting addresses per decision is costly)."""
    targets: tuple[str, ...] = ()
    """Every verdict the region's state reads: its own, its balancer's, all its endpoints'."""
    weights: Mapping[IPAddress, int] = field(default_factory=dict)
    """Endpoint address -> its weight (0: a standby)."""
    serving: Mapping[int, tuple[IPAddress, ...]] = field(default_factory=dict)
    """IP version -> the addresses answered while all are up: the weighted ones (all of
    them when none is weighted), before `answers` picks among them."""

    @classmethod
    def of(cls, region: Region) -> RegionInfo:
        by_family: dict[int, list[IPAddress]] = {4: [], 6: []}
        for endpoint in region.endpoints:
            by_family[endpoint.address.version].append(endpoint.address)
        endpoint_targets = {e.address: endpoint_target(region.name, e.address) for e in region.endpoints}
        weights = {e.address: e.weight for e in region.endpoints}
        return cls(
            region=region,
            vector=unit_vector(region.latitude, region.longitude),
            addresses={v: tuple(a) for v, a in by_family.items()},
            endpoint_targets=endpoint_targets,
            targets=(region.name, balancer_target(region.name), *endpoint_targets.values()),
            weights=weights,
            serving={v: weighted_first(a, weights) for v, a in by_family.items()},
        )


def weighted_first(addresses: Sequence[IPAddress], weights: Mapping[IPAddress, int]) -> tuple[IPAddress, ...]:
    """The addresses with a weight; all of them when none has (standbys only answer then)."""
    return tuple([a for a in addresses if weights[a] > 0]) or tuple(addresses)


@dataclass(slots=True)
class Context:
    client: Client
    regions: Mapping[str, RegionInfo]
    region_up: Mapping[str, bool]
    """Region name -> whether the region is up (its own verdict, drains and min_healthy)."""
    verdicts: Verdicts
    family: int
    """4 for A, 6 for AAAA."""
    default: Candidates = ()
    """The record's regions for clients that cannot be located."""
    latency: LatencyTable | None = None
    measured: Measured | None = None
    """RTTs the nodes measured to resolver networks, ranked (the `latency` step reads them first)."""
    utilisation: Mapping[str, float] = field(default_factory=dict)
    """Region -> load reported by its regional balancer (0..1)."""
    now: float = 0.0
    explain: bool = True
    """Whether steps write their notes (for `geodns query` and the trace); the answer path does not."""
    memo: dict | None = None
    """Per snapshot, from the answer path: outcomes of the steps that do not read the client,
    and whole decisions by the path to them (see `run_chain`). None: compute everything."""

    def is_up(self, region: str) -> bool:
        return self.region_up.get(region, True)


def network_of(address: IPAddress, prefix: int) -> IPNetwork:
    return ipaddress.ip_network((address, prefix), strict=False)
