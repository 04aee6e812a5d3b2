"""Hand-built steering contexts over the example zone's five regions."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from geodns.config.model import Endpoint, Region, Steered, Step
from geodns.geo import Location
from geodns.steer import Client, Context, LatencyTable, RegionInfo, Verdict
from geodns.steer.verdict import region_is_up

ip = ipaddress.ip_address
net = ipaddress.ip_network


def region(name: str, lat: float, lon: float, *addresses: str, bias: float = 0.0, weight: int = 1,
           min_healthy: int = 1) -> Region:
    return Region(
        name=name, latitude=lat, longitude=lon,
        endpoints=tuple(Endpoint(ip(a)) for a in addresses),
        bias_km=bias, weight=weight, min_healthy=min_healthy,
    )


REGIONS = {
    "us-east": region("us-east", 38.9, -77.0, "192.0.2.10", "2001:db8::10"),
    "us-west": region("us-west", 45.6, -121.2, "192.0.2.20", "2001:db8::20"),
    "eu-west": region("eu-west", 53.3, -6.3, "192.0.2.30", "2001:db8::30"),
    "ap-southeast": region("ap-southeast", 1.35, 103.8, "192.0.2.40", "2001:db8::40"),
    "sa-east": region("sa-east", -23.5, -46.6, "192.0.2.50", "2001:db8::50"),
}
ALL = tuple(REGIONS)

LONDON = Location(51.5, -0.1, "EU", "GB", "GB-ENG", "London")
SAN_FRANCISCO = Location(37.77, -122.42, "NA", "US", "US-CA", "San Francisco")
NEW_YORK = Location(40.7, -74.0, "NA", "US", "US-NY")
SAO_PAULO = Location(-23.55, -46.63, "SA", "BR", "BR-SP")
SINGAPORE = Location(1.29, 103.85, "AS", "SG", None)
BERLIN = Location(52.52, 13.4, "EU", "DE", "DE-BE")
SYDNEY = Location(-33.87, 151.2, "OC", "AU", "AU-NSW")
COUNTRY_ONLY_US = Location(None, None, "NA", "US", None)

CLIENTS = [
    (LONDON, "81.2.69.1"), (SAN_FRANCISCO, "8.8.8.8"), (NEW_YORK, "198.51.100.7"), (SAO_PAULO, "200.1.1.1"),
    (SINGAPORE, "1.1.1.1"), (BERLIN, "5.5.5.5"), (SYDNEY, "1.0.0.1"), (COUNTRY_ONLY_US, "3.3.3.3"), (None, None),
]
"""A client in each place above (and one nowhere), with an address: (location, address)."""

DOWN = Verdict(up=False, cause="3 of 3 observers: connect refused")


def client(location: Location | None = None, address: str | None = None, prefix: int = 24) -> Client:
    addr = ip(address) if address else None
    return Client(addr, location, prefix if addr else None)


def context(
    location: Location | None = None,
    address: str | None = None,
    *,
    verdicts: Mapping[str, Verdict] | None = None,
    family: int = 4,
    default: Iterable[str] = (),
    latency: LatencyTable | None = None,
    utilisation: Mapping[str, float] | None = None,
    regions: Mapping[str, Region] | None = None,
    now: float = 1000.0,
) -> Context:
    """A Context as the DNS layer builds one: region_up from region_is_up over the verdicts."""
    verdicts = dict(verdicts or {})
    infos = {name: RegionInfo.of(r) for name, r in (regions or REGIONS).items()}
    return Context(
        client=client(location, address),
        regions=infos,
        region_up={name: region_is_up(info, verdicts) for name, info in infos.items()},
        verdicts=verdicts,
        family=family,
        default=tuple(default),
        latency=latency,
        utilisation=dict(utilisation or {}),
        now=now,
    )


def steered(*chain: Step | str, candidates: Iterable[str] = ALL, default: Iterable[str] = (),
            fallback: Iterable[str] = ()) -> Steered:
    steps = tuple(Step(s) if isinstance(s, str) else s for s in chain)
    return Steered(chain=steps, candidates=tuple(candidates), default=tuple(default), fallback=tuple(fallback))
