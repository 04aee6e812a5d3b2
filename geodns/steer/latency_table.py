"""The latency table: median RTT from client networks to regions.

Loaded by the control plane from YAML (`networks:` CIDR keys, most specific
wins, then `countries:`, then `continents:`); the steering step only reads it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from geodns.config import ConfigInvalid, read_yaml_file
from geodns.config.model import IPAddress, IPNetwork
from geodns.geo import Location

Row = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class LatencyTable:
    networks: tuple[tuple[IPNetwork, Row], ...]
    """Most specific first."""
    countries: Mapping[str, Row]
    continents: Mapping[str, Row]
    source: str = ""

    def lookup(self, address: IPAddress | None, location: Location | None) -> tuple[Row, str] | None:
        """The RTT row for a client, and what matched (for explanations)."""
        if address is not None:
            for network, row in self.networks:
                if network.version == address.version and address in network:
                    return row, f"network {network}"
        if location is not None:
            if location.country and location.country in self.countries:
                return self.countries[location.country], f"country {location.country}"
            if location.continent and location.continent in self.continents:
                return self.continents[location.continent], f"continent {location.continent}"
        return None

    def cidr_prefixes(self) -> tuple[IPNetwork, ...]:
        return tuple(n for n, _ in self.networks)


class LatencyTableError(Exception):
    pass


def load_latency_table(path: str | Path, regions: set[str] | None = None) -> LatencyTable:
    """Read and validate a latency table file. Raises LatencyTableError with file:line."""
    path = str(path)
    try:
        doc = read_yaml_file(path) or {}
    except ConfigInvalid as exc:  # unreadable, or not YAML: `file:line: ...` already
        raise LatencyTableError(str(exc)) from None
    if not isinstance(doc, dict):
        raise LatencyTableError(f"{path}:1: expected a mapping")
    errors = []
    for key in doc:
        if key not in ("networks", "countries", "continents"):
            errors.append(f"{path}:{doc.line_of(key)}: {key}: unknown key (expected networks, countries, continents)")

    def rows(section: str) -> dict:
        out = {}
        body = doc.get(section) or {}
        if not isinstance(body, dict):
            errors.append(f"{path}:{doc.line_of(section)}: {section}: expected a mapping")
            return out
        for key, row in body.items():
            line = body.line_of(key)
            if not isinstance(row, dict) or not row:
                errors.append(f"{path}:{line}: {section}.{key}: expected a mapping of region to milliseconds")
                continue
            parsed = {}
            for region, rtt in row.items():
                if regions is not None and region not in regions:
                    errors.append(f"{path}:{line}: {section}.{key}.{region}: not a region of the zone")
                elif isinstance(rtt, bool) or not isinstance(rtt, int | float) or rtt < 0:
                    errors.append(f"{path}:{line}: {section}.{key}.{region}: {rtt!r} is not a latency in ms")
                else:
                    parsed[region] = float(rtt)
            out[key] = parsed
        return out

    networks = []
    for key, row in rows("networks").items():
        try:
            networks.append((ipaddress.ip_network(str(key), strict=True), row))
        except ValueError:
            errors.append(f"{path}:{doc['networks'].line_of(key)}: networks.{key}: not a CIDR network")
    countries = {str(k).upper(): v for k, v in rows("countries").items()}
    continents = {str(k).upper(): v for k, v in rows("continents").items()}
    if errors:
        raise LatencyTableError("\n".join(errors))
    networks.sort(key=lambda item: -item[0].prefixlen)
    return LatencyTable(tuple(networks), countries, continents, path)


def address_in(address: IPAddress, network: IPNetwork) -> bool:
    return address.version == network.version and address in network
