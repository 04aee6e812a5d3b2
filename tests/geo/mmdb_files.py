"""Small MaxMind DB files for tests, written with the `mmdb-writer` package.

Three schemas, the ones `geodns.geo.GeoDatabase` reads:

    write_city_db(path, {"81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB",
                                              continent="EU", subdivision="ENG",
                                              city="London")})
    write_country_db(path, {"81.2.69.0/24": dict(country="GB", continent="EU")})
    write_dbip_flat_db(path, {"81.2.69.0/24": dict(lat=51.5, lon=-0.09, country="GB",
                                                   state="England", city="London")})

Each takes the file to write and a mapping of CIDR (str) to fields; optional
fields (`subdivision`, `city`, `state`, `continent` for the city schema) may be
left out or None. `subdivision` is the ISO 3166-2 suffix (`"CA"`) or the whole
code (`"US-CA"`). Keyword arguments:

- `ip_version=6` (default): an IPv6 tree, IPv4 networks stored under ::/96
  where maxminddb looks up IPv4 addresses (as MaxMind's own files do);
  `ip_version=4`: an IPv4-only tree (IPv6 CIDRs are then an error).
- `description="..."`: the metadata description (English).
- `database_type=`: defaults to GeoIP2-City, GeoIP2-Country, DBIP-City-Lite.

The writers return the path. They write to a temporary name and rename it over
`path`, so replacing a database a `GeoDatabase` has open is atomic, as an
operator's update would be.

Import from another test suite with `from geo.mmdb_files import write_city_db`
(pytest puts `tests/` on sys.path, as `tests/` itself is not a package), or
`from tests.geo.mmdb_files import ...` under `python -m pytest` from the root.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF32, MmdbF64, MmdbU16, MMDBWriter
from netaddr import IPSet

__all__ = ["write_city_db", "write_country_db", "write_dbip_flat_db"]

COUNTRY_NAMES = {"GB": "United Kingdom", "US": "United States", "DE": "Germany", "BR": "Brazil"}
CONTINENT_NAMES = {
    "AF": "Africa", "AN": "Antarctica", "AS": "Asia", "EU": "Europe",
    "NA": "North America", "OC": "Oceania", "SA": "South America",
}


def _city_record(f: Mapping[str, Any]) -> dict[str, Any]:
    """GeoIP2/GeoLite2-City records: fields lat, lon, country, continent, subdivision, city."""
    record: dict[str, Any] = {
        "location": {
            "latitude": MmdbF64(float(f["lat"])),
            "longitude": MmdbF64(float(f["lon"])),
            "accuracy_radius": MmdbU16(50),
        },
        "country": _country(f["country"]),
    }
    if f.get("continent"):
        record["continent"] = _continent(f["continent"])
    if f.get("subdivision"):
        code = f["subdivision"].split("-", 1)[-1]
        record["subdivisions"] = [{"iso_code": code, "names": {"en": f"Subdivision {code}"}}]
    if f.get("city"):
        record["city"] = {"names": {"en": f["city"]}}
    return record


def _country_record(f: Mapping[str, Any]) -> dict[str, Any]:
    """GeoIP2/GeoLite2-Country records: fields country, continent (no coordinates)."""
    record: dict[str, Any] = {"country": _country(f["country"]), "registered_country": _country(f["country"])}
    if f.get("continent"):
        record["continent"] = _continent(f["continent"])
    return record


def _dbip_flat_record(f: Mapping[str, Any]) -> dict[str, Any]:
    """DB-IP's flat records (float32 coordinates): fields lat, lon, country, state, city."""
    return {
        "city": f.get("city") or "",
        "country_code": f["country"],
        "latitude": MmdbF32(float(f["lat"])),
        "longitude": MmdbF32(float(f["lon"])),
        "postcode": "",
        "state1": f.get("state") or "",
        "state2": "",
        "timezone": "",
    }


def _writer(record: Callable[[Mapping[str, Any]], dict[str, Any]], schema: str, default_type: str):
    """A `write_*_db(path, networks, ip_version=6, description=..., database_type=...)` for one schema."""

    def write(
        path: str | Path,
        networks: Mapping[str, Mapping[str, Any]],
        ip_version: int = 6,
        description: str = f"geodns test database ({schema} schema)",
        database_type: str = default_type,
    ) -> Path:
        records = {cidr: record(fields) for cidr, fields in networks.items()}
        return _write(path, records, ip_version, description, database_type)

    write.__doc__ = record.__doc__
    return write


write_city_db = _writer(_city_record, "GeoIP2-City", "GeoIP2-City")
write_country_db = _writer(_country_record, "GeoIP2-Country", "GeoIP2-Country")
write_dbip_flat_db = _writer(_dbip_flat_record, "DB-IP flat", "DBIP-City-Lite")


def _country(code: str) -> dict[str, Any]:
    return {"iso_code": code, "names": {"en": COUNTRY_NAMES.get(code, code)}}


def _continent(code: str) -> dict[str, Any]:
    return {"code": code, "names": {"en": CONTINENT_NAMES.get(code, code)}}


def _write(
    path: str | Path, records: Mapping[str, Any], ip_version: int, description: str, database_type: str
) -> Path:
    path = Path(path)
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type=database_type,
        languages=["en"],
        description={"en": description},
        ipv4_compatible=ip_version == 6,
    )
    # Shorter prefixes first: a more specific network then carves its hole in the wider one.
    for cidr in sorted(records, key=lambda c: ipaddress.ip_network(c).prefixlen):
        writer.insert_network(IPSet([cidr]), records[cidr])
    tmp = path.with_name(f".{path.name}.tmp")
    writer.to_db_file(str(tmp))
    os.replace(tmp, path)
    return path
