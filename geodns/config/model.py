"""The typed configuration model: what a zone file means once validated.

Every value here is frozen; the zone loader (`geodns.config.load_zones`) is the
only producer, and the snapshot compiler the main consumer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BALANCER_STATUS_KINDS = ("haproxy", "nginx", "envoy")
"""Check types, for a region's `balancer:` only, that read the balancer's own status page."""


@dataclass(frozen=True, slots=True)
class Check:
    """An active health check, as configured on a region or an endpoint."""

    kind: str
    """`http`, `https`, `tcp`, `dns` or `exec`; for a region's `balancer:` also `haproxy`,
    `nginx` or `envoy` (read the balancer's own status page, `geodns.health.lbstatus`)."""
    host: str | None = None
    """Address to probe; None: the endpoint's own address."""
    port: int | None = None
    """Port to probe; None: 80 for http, 443 for https, 53 for dns."""
    path: str = "/"
    method: str = "GET"
    host_header: str | None = None
    expect_status: tuple[int, ...] = (200,)
    body_contains: str | None = None
    verify_tls: bool = True
    qname: str | None = None
    """Name asked by a `dns` check."""
    command: tuple[str, ...] = ()
    """argv run by an `exec` check; exit status 0 means up."""
    interval: float = 5.0
    timeout: float = 2.0
    jitter: float = 0.5
    fall: int = 3
    rise: int = 2
    observers: int | None = None
    """Limit the endpoint to k of the N observers (None: every node probes)."""
    url: str | None = None
    """haproxy/nginx/envoy: the status page (CSV stats or metrics, stub_status, /clusters?format=json)."""
    pool: str | None = None
    """haproxy: the backend (`backend:`); envoy: the cluster (`cluster:`) whose servers count."""
    min_up: int = 1
    """haproxy/envoy: the check is down when fewer of the pool's servers are up."""
    capacity: int | None = None
    """nginx: connections it can hold (utilisation = active / capacity); haproxy/envoy: overrides
    the limits they report (server maxconn, circuit breakers)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: IPAddress
    weight: int = 1
    """Its share of the region's answers when the region's `answers` limits how many are
    given; 0: a standby, answered only when none of the region's weighted endpoints of
    its family is up."""
    check: Check | None = None
    """Overrides the region's check for this endpoint."""


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    latitude: float
    longitude: float
    endpoints: tuple[Endpoint, ...]
    bias_km: float = 0.0
    """Subtracted from the distance to this region: a positive bias draws clients."""
    weight: int = 1
    min_healthy: int = 1
    check: Check | None = None
    balancer: Check | None = None
    """The regional balancer's own check (e.g. `geodns balance` /v1/load)."""
    capacity_url: str | None = None
    answers: int | None = None
    """At most this many of the region's addresses of a family per answer, picked per query
    in proportion to the endpoints' weights; None: every one that is up."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a steering chain: its kind and its (validated) parameters."""

    kind: str
    params: Any = None


@dataclass(frozen=True, slots=True)
class GeoRule:
    """One rule of a `geolocation` step: clients matching any of its matches go to `regions`."""

    continents: frozenset[str]
    countries: frozenset[str]
    subdivisions: frozenset[str]
    """`CC-SUB` pairs, e.g. `US-CA`."""
    networks: tuple[IPNetwork, ...]
    regions: tuple[str, ...]
    label: str
    """The matches as written, for explanations."""


@dataclass(frozen=True, slots=True)
class Steered:
    """A name answered by a steering chain over the zone's regions."""

    chain: tuple[Step, ...]
    candidates: tuple[str, ...]
    """Regions the chain starts from (default: every region of the zone)."""
    default: tuple[str, ...] = ()
    """Regions for clients that cannot be located (empty: all candidates)."""
    fallback: tuple[str, ...] = ()
    """Fail-open answer when every candidate is down (empty: all candidates)."""
    failover_ttl: int | None = None
    """TTL while the name is failing open or has lost a candidate (None: the record's)."""


@dataclass(frozen=True, slots=True)
class RRset:
    rtype: str
    ttl: int
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Node:
    """One owner name in the zone: plain RRsets and/or a steered A/AAAA."""

    name: str
    """Absolute, lower case, without the trailing dot."""
    rrsets: tuple[RRset, ...] = ()
    steered: Steered | None = None
    ttl: int = 30
    line: int = 0


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    ttl: int


@dataclass(frozen=True, slots=True)
class NameServer:
    name: str
    glue: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class Dnssec:
    """A signed zone's settings (`dnssec:` in its file)."""

    keys_dir: str
    """The key directory, resolved relative to the zone file."""
    keys: tuple[Any, ...] = ()
    """Every key of the zone found there (`geodns.dnssec.keys.Key`), read and checked by the loader."""


@dataclass(frozen=True, slots=True)
class Zone:
    origin: str
    """Absolute, lower case, without the trailing dot."""
    source: str
    """The file it was read from, as given."""
    soa: SOA
    nameservers: tuple[NameServer, ...]
    ns_ttl: int
    ttl: int
    regions: dict[str, Region] = field(hash=False)
    nodes: dict[str, Node] = field(hash=False)
    latency_table: str | None = None
    """Path of the latency table file, resolved relative to the zone file."""
    dnssec: Dnssec | None = None
    """Set when the zone is signed (answers to queries with DO carry RRSIGs)."""
