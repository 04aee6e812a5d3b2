"""The zone document: origin, TTLs, SOA, name servers, DNSSEC keys and regions.
Records are `records.py`'s, steering `steering.py`'s, checks `checks.py`'s."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from geodns.config._yaml import LineList, LineMap
from geodns.config.checks import REGION_BALANCER, ZONE, read_check
from geodns.config.fields import (
    Ctx,
    check_keys,
    domain_name,
    line_at,
    read_domain_name,
    read_float,
    read_int,
    read_ip,
    read_list,
    read_str,
    show,
    take,
)
from geodns.config.model import SOA, Dnssec, Endpoint, NameServer, Region, Zone
from geodns.config.records import read_records

DEFAULT_TTL = 30

DNSSEC_KEYS = ("keys",)
NAMESERVER_KEYS = ("name", "glue")
ENDPOINT_KEYS = ("address", "weight", "check")
ZONE_KEYS = ("zone", "ttl", "soa", "nameservers", "ns_ttl", "regions", "records", "latency_table", "dnssec")


def read_zone(ctx: Ctx, doc: Any, file: str) -> Zone | None:
    if doc is None:
        return None
    if not check_keys(ctx, doc, "", ZONE_KEYS, ("zone", "soa", "nameservers")):
        return None
    origin = domain_name(ctx, "", doc.get("zone", ""), line_at(doc, "zone"), "zone") if "zone" in doc else None
    if origin is None:
        return None
    values: dict[str, Any] = {"origin": origin, "source": file, "ttl": DEFAULT_TTL, "ns_ttl": 3600}
    ok = all([take(ctx, doc, "", values, key, read_int, 0, 2**31 - 1) for key in ("ttl", "ns_ttl")])
    soa = _soa(ctx, doc["soa"], origin) if "soa" in doc else None
    values["nameservers"] = _nameservers(ctx, doc, origin) if "nameservers" in doc else ()
    values["regions"] = _regions(ctx, doc["regions"]) if "regions" in doc else {}
    if take(ctx, doc, "", values, "latency_table", read_str) and "latency_table" in values:
        values["latency_table"] = str(Path(file).parent / values["latency_table"])
    records = doc.get("records") or LineMap()
    values["nodes"] = read_records(ctx, records, origin, values["regions"], values["ttl"] or DEFAULT_TTL, doc)
    if "dnssec" in doc:
        values["dnssec"] = _dnssec(ctx, doc["dnssec"], origin, file)
    return Zone(soa=soa, **values) if ok and soa is not None else None


def _dnssec(ctx: Ctx, spec: Any, origin: str, file: str) -> Dnssec | None:
    """`dnssec: {keys: DIR}`: the key files must be readable, of this zone, and one must sign."""
    if not check_keys(ctx, spec, "dnssec", DNSSEC_KEYS, DNSSEC_KEYS) or "keys" not in spec:
        return None
    value = read_str(ctx, spec, "keys", "dnssec.keys")
    if value is None:
        return None
    from geodns.dnssec.keys import KeyFileError, load

    directory = Path(file).parent / value
    line = line_at(spec, "keys")
    try:
        keys = load(origin, directory)
    except KeyFileError as exc:
        ctx.error(line, "dnssec.keys", str(exc))
        return None
    if not any(k.signing for k in keys):
        found = f"{len(keys)} key(s), none active" if keys else "no key files"
        ctx.error(line, "dnssec.keys", f"{directory}: {found} for {origin or '.'} (geodns keys generate {origin or '.'} --dir {value})")
        return None
    return Dnssec(str(directory), keys)


SOA_FIELDS = ("mname", "rname", "serial", "refresh", "retry", "expire", "minimum", "ttl")


def _soa(ctx: Ctx, soa: Any, origin: str) -> SOA | None:
    if not check_keys(ctx, soa, "soa", SOA_FIELDS, ("mname", "rname", "serial")):
        return None
    values: dict[str, Any] = {"refresh": 3600, "retry": 600, "expire": 604800, "minimum": 60, "ttl": 3600}
    readers = [(key, read_domain_name, origin) for key in ("mname", "rname")]
    readers += [(key, read_int, 0, 2**32 - 1 if key == "serial" else 2**31 - 1) for key in SOA_FIELDS[2:]]
    ok = all([take(ctx, soa, "soa", values, key, read, *args) for key, read, *args in readers])
    return SOA(**values) if ok and all(k in values for k in ("mname", "rname", "serial")) else None


def _nameservers(ctx: Ctx, doc: LineMap, origin: str) -> tuple[NameServer, ...]:
    items = read_list(ctx, doc, "nameservers", "nameservers")
    result = []
    for i, item in enumerate(items or ()):
        field = f"nameservers[{i}]"
        if isinstance(item, str):
            item = LineMap({"name": item})
            item.line = items.line_of(i)
            item.key_lines = {}
        if not check_keys(ctx, item, field, NAMESERVER_KEYS, ("name",)):
            continue
        name = domain_name(ctx, origin, item["name"], line_at(item, "name"), f"{field}.name") if "name" in item else None
        glue = []
        if "glue" in item:
            addrs = read_list(ctx, item, "glue", f"{field}.glue") or ()
            for j in range(len(addrs)):
                address = read_ip(ctx, addrs, j, f"{field}.glue[{j}]")
                if address is not None:
                    glue.append(address)
        if name is not None:
            if glue and not (name == origin or name.endswith("." + origin)):
                ctx.error(line_at(item, "glue"), f"{field}.glue", f"glue for {name!r}, which is outside the zone")
            result.append(NameServer(name, tuple(glue)))
    if not result and not ctx.errors:
        ctx.error(doc.line_of("nameservers"), "nameservers", "at least one name server is required")
    return tuple(result)


# --- regions and checks ----------------------------------------------------------------

MAX_ANSWERS = 64
"""Bound of a region's `answers` (addresses per answer): a UDP answer of 64 AAAA is ~2 KB."""
REGION_KEYS = ("coordinates", "endpoints", "bias", "weight", "min_healthy", "answers", "check", "balancer", "capacity_url")


def _regions(ctx: Ctx, regions: Any) -> dict[str, Region]:
    if not isinstance(regions, dict):
        ctx.error(getattr(regions, "line", 0), "regions", f"expected a mapping, got {show(regions)}")
        return {}
    result = {}
    for name, spec in regions.items():
        field = f"regions.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            ctx.error(line_at(regions, name), field, "region names are letters, digits, '-', '_' and '.'")
            continue
        if not check_keys(ctx, spec, field, REGION_KEYS, ("coordinates", "endpoints")):
            continue
        region = _region(ctx, name, spec, field)
        if region is not None:
            result[name] = region
    return result


def _region(ctx: Ctx, name: str, spec: LineMap, field: str) -> Region | None:
    ok = True
    lat = lon = None
    if "coordinates" in spec:
        coords = spec["coordinates"]
        if not isinstance(coords, list) or len(coords) != 2:
            ctx.error(line_at(spec, "coordinates"), f"{field}.coordinates", "expected [latitude, longitude]")
            ok = False
        else:
            lat = read_float(ctx, coords, 0, f"{field}.coordinates[0]", -90, 90)
            lon = read_float(ctx, coords, 1, f"{field}.coordinates[1]", -180, 180)
            ok &= lat is not None and lon is not None
    endpoints = []
    if "endpoints" in spec:
        items = read_list(ctx, spec, "endpoints", f"{field}.endpoints") or LineList()
        for i, item in enumerate(items):
            efield = f"{field}.endpoints[{i}]"
            if isinstance(item, dict):
                if not check_keys(ctx, item, efield, ENDPOINT_KEYS, ("address",)):
                    ok = False
                    continue
                address = read_ip(ctx, item, "address", f"{efield}.address") if "address" in item else None
                weight = read_int(ctx, item, "weight", f"{efield}.weight", 0, 65535) if "weight" in item else 1
                check = read_check(ctx, item["check"], f"{efield}.check") if "check" in item else None
                if address is None or weight is None:
                    ok = False
                    continue
                endpoints.append(Endpoint(address, weight, check))
            else:
                address = read_ip(ctx, items, i, efield)
                if address is None:
                    ok = False
                    continue
                endpoints.append(Endpoint(address))
        if not endpoints and ok:
            ctx.error(line_at(spec, "endpoints"), f"{field}.endpoints", "a region needs at least one endpoint")
            ok = False
        seen = set()
        for i, endpoint in enumerate(endpoints):
            if endpoint.address in seen:
                ctx.error(items.line_of(i), f"{field}.endpoints[{i}]", f"duplicate endpoint {endpoint.address}")
                ok = False
            seen.add(endpoint.address)
    values: dict[str, Any] = {"name": name, "latitude": lat, "longitude": lon, "endpoints": tuple(endpoints)}
    ok &= all([take(ctx, spec, field, values, key, read, *bounds, attr=attr) for key, read, bounds, attr in _REGION_NUMBERS])
    for key, place in (("check", ZONE), ("balancer", REGION_BALANCER)):
        if key in spec:  # a wrong check is an error, but the region stands: its names raise no more
            values[key] = read_check(ctx, spec[key], f"{field}.{key}", place)
    take(ctx, spec, field, values, "capacity_url", read_str)
    min_healthy = values.get("min_healthy", 1)
    if endpoints and min_healthy > len(endpoints):
        ctx.error(line_at(spec, "min_healthy"), f"{field}.min_healthy", f"{min_healthy} is more than the {len(endpoints)} endpoints")
        ok = False
    return Region(**values) if ok and lat is not None and lon is not None else None


_REGION_NUMBERS = (
    ("bias", read_float, (-20000, 20000), "bias_km"),
    ("weight", read_int, (0, 65535), None),
    ("min_healthy", read_int, (0, 65535), None),
    ("answers", read_int, (1, MAX_ANSWERS), None),
)
"""(key, reader, its bounds, Region attribute) of a region's numbers."""
