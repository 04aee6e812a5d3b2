"""Load and validate zone files into the typed model.

Validation collects every error, each as `file:line: field: message`, and a
file with any error yields no zone at all: a typo never passes silently and a
half-valid configuration is never served.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from geodns.config._yaml import DuplicateKey, LineList, LineMap, load_yaml
from geodns.config.model import (
    BALANCER_STATUS_KINDS,
    SOA,
    Check,
    Dnssec,
    Endpoint,
    IPNetwork,
    NameServer,
    Node,
    Region,
    RRset,
    Steered,
    Step,
    Zone,
)

DEFAULT_TTL = 30
PLAIN_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "NS")
STEP_KINDS = (
    "healthy",
    "geo_proximity",
    "geolocation",
    "latency",
    "weighted",
    "failover",
    "capacity",
    "limit",
)
_LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")
_CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class ConfigInvalid(Exception):
    """Raised with every error found; nothing was loaded."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True, slots=True)
class GeoRule:
    """One geolocation rule: clients matching any of `match` go to `regions`."""

    continents: frozenset[str]
    countries: frozenset[str]
    subdivisions: frozenset[str]
    """`CC-SUB` pairs, e.g. `US-CA`."""
    networks: tuple[IPNetwork, ...]
    regions: tuple[str, ...]
    label: str


class _Ctx:
    """Error collector bound to one file."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []

    def error(self, line: int, field: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, line, field, message))


def _line(container: Any, key: Any) -> int:
    if isinstance(container, LineMap):
        return container.line_of(key)
    if isinstance(container, LineList) and isinstance(key, int):
        return container.line_of(key)
    return getattr(container, "line", 0)


def _check_keys(
    ctx: _Ctx, mapping: Any, field: str, allowed: Iterable[str], required: Iterable[str] = ()
) -> bool:
    if not isinstance(mapping, dict):
        ctx.error(getattr(mapping, "line", 0), field, f"expected a mapping, got {_show(mapping)}")
        return False
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            ctx.error(_line(mapping, key), _join(field, key), f"unknown key (expected one of: {hint})")
    for key in required:
        if key not in mapping:
            ctx.error(getattr(mapping, "line", 0), _join(field, key), "is required")
    return True


def _join(field: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{field}[{key}]"
    return f"{field}.{key}" if field else str(key)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _int(ctx: _Ctx, container: Any, key: Any, field: str, lo: int, hi: int) -> int | None:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.error(_line(container, key), field, f"{_show(value)} is not an integer")
        return None
    if not lo <= value <= hi:
        ctx.error(_line(container, key), field, f"{value} is out of range {lo}..{hi}")
        return None
    return value


def _float(ctx: _Ctx, container: Any, key: Any, field: str, lo: float, hi: float) -> float | None:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        ctx.error(_line(container, key), field, f"{_show(value)} is not a number")
        return None
    if not lo <= value <= hi:
        ctx.error(_line(container, key), field, f"{value} is out of range {lo}..{hi}")
        return None
    return float(value)


def _str(ctx: _Ctx, container: Any, key: Any, field: str) -> str | None:
    value = container[key]
    if not isinstance(value, str) or not value:
        ctx.error(_line(container, key), field, f"{_show(value)} is not a non-empty string")
        return None
    return value


def _ip(ctx: _Ctx, container: Any, key: Any, field: str):
    value = container[key]
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        ctx.error(_line(container, key), field, f"{_show(value)} is not an IP address")
        return None


def _list(ctx: _Ctx, container: Any, key: Any, field: str) -> LineList | None:
    """The value as a list; a single scalar is accepted as a list of one."""
    value = container[key]
    if isinstance(value, LineList):
        return value
    if isinstance(value, dict):
        ctx.error(_line(container, key), field, "expected a list, got a mapping")
        return None
    single = LineList([value])
    single.line = _line(container, key)
    single.item_lines = [single.line]
    return single


def _name(ctx: _Ctx, origin: str, value: Any, line: int, field: str) -> str | None:
    """An owner or target name: relative to the origin unless it ends with a dot; `@` is the origin."""
    if not isinstance(value, str) or not value:
        ctx.error(line, field, f"{_show(value)} is not a domain name")
        return None
    text = value.strip().lower()
    if text == "@":
        return origin
    absolute = text[:-1] if text.endswith(".") else f"{text}.{origin}" if origin else text
    labels = absolute.split(".")
    if (
        len(absolute) > 253
        or any(not _LABEL.match(label) for label in labels)
        or "*" in labels[1:]
    ):
        ctx.error(line, field, f"{value!r} is not a valid domain name")
        return None
    return absolute


def load_zone_text(text: str, file: str) -> Zone:
    """Parse and validate one zone file's text. Raises ConfigInvalid."""
    ctx = _Ctx(file)
    try:
        doc = load_yaml(text)
    except DuplicateKey as exc:
        raise ConfigInvalid([ConfigError(file, exc.line, "", str(exc))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise ConfigInvalid([ConfigError(file, line, "", f"YAML syntax: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigInvalid([ConfigError(file, 0, "", f"YAML: {exc}")]) from None
    zone = _zone(ctx, doc, file)
    if ctx.errors or zone is None:
        raise ConfigInvalid(ctx.errors or [ConfigError(file, 0, "", "empty zone file")])
    return zone


def load_zone_file(path: str | Path) -> Zone:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigInvalid([ConfigError(str(path), 0, "", f"cannot read: {exc}")]) from None
    return load_zone_text(text, str(path))


def zone_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    return [path]


def load_zones(path: str | Path, replace: Mapping[Path, str | None] | None = None) -> list[Zone]:
    """Every zone of a file or a directory of `*.yaml`, validated whole. Raises ConfigInvalid.

    `replace` validates the directory as it would be after a change, without touching
    it: a file's text given in place of what is on disk, or None for a removed file."""
    replace = replace or {}
    files = sorted({*(f for f in zone_files(path) if replace.get(f, "") is not None),
                    *(f for f, text in replace.items() if text is not None)})
    if not files:
        raise ConfigInvalid([ConfigError(str(path), 0, "", "no zone files (*.yaml) found")])
    zones: list[Zone] = []
    errors: list[ConfigError] = []
    for file in files:
        try:
            text = replace.get(file)
            zones.append(load_zone_file(file) if text is None else load_zone_text(text, str(file)))
        except ConfigInvalid as exc:
            errors.extend(exc.errors)
    seen: dict[str, str] = {}
    for zone in zones:
        if zone.origin in seen:
            errors.append(
                ConfigError(zone.source, 1, "zone", f"{zone.origin!r} is also defined in {seen[zone.origin]}")
            )
        seen[zone.origin] = zone.source
    if errors:
        raise ConfigInvalid(errors)
    return zones


# --- the zone document ---------------------------------------------------------------

_ZONE_KEYS = ("zone", "ttl", "soa", "nameservers", "ns_ttl", "regions", "records", "latency_table", "dnssec")


def _zone(ctx: _Ctx, doc: Any, file: str) -> Zone | None:
    if doc is None:
        return None
    if not _check_keys(ctx, doc, "", _ZONE_KEYS, ("zone", "soa", "nameservers")):
        return None
    origin = _name(ctx, "", doc.get("zone", ""), _line(doc, "zone"), "zone") if "zone" in doc else None
    if origin is None:
        return None
    if not str(doc["zone"]).endswith(".") and "." not in origin:
        pass  # a single-label zone is allowed (lab setups); no further check
    ttl = _int(ctx, doc, "ttl", "ttl", 0, 2**31 - 1) if "ttl" in doc else DEFAULT_TTL
    ns_ttl = _int(ctx, doc, "ns_ttl", "ns_ttl", 0, 2**31 - 1) if "ns_ttl" in doc else 3600
    soa = _soa(ctx, doc["soa"], origin) if "soa" in doc else None
    nameservers = _nameservers(ctx, doc, origin) if "nameservers" in doc else ()
    regions = _regions(ctx, doc["regions"]) if "regions" in doc else {}
    latency_table = None
    if "latency_table" in doc:
        value = _str(ctx, doc, "latency_table", "latency_table")
        if value is not None:
            latency_table = str(Path(file).parent / value)
    nodes = _records(ctx, doc.get("records") or LineMap(), origin, regions, ttl or DEFAULT_TTL, doc)
    dnssec = _dnssec(ctx, doc["dnssec"], origin, file) if "dnssec" in doc else None
    if soa is None or ttl is None or ns_ttl is None:
        return None
    return Zone(
        origin=origin,
        source=file,
        soa=soa,
        nameservers=nameservers,
        ns_ttl=ns_ttl,
        ttl=ttl,
        regions=regions,
        nodes=nodes,
        latency_table=latency_table,
        dnssec=dnssec,
    )


def _dnssec(ctx: _Ctx, spec: Any, origin: str, file: str) -> Dnssec | None:
    """`dnssec: {keys: DIR}`: the key files must be readable, of this zone, and one must sign."""
    if not _check_keys(ctx, spec, "dnssec", ("keys",), ("keys",)) or "keys" not in spec:
        return None
    value = _str(ctx, spec, "keys", "dnssec.keys")
    if value is None:
        return None
    from geodns.dnssec.keys import KeyFileError, load

    directory = Path(file).parent / value
    line = _line(spec, "keys")
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


_SOA_FIELDS = ("mname", "rname", "serial", "refresh", "retry", "expire", "minimum", "ttl")


def _soa(ctx: _Ctx, soa: Any, origin: str) -> SOA | None:
    if not _check_keys(ctx, soa, "soa", _SOA_FIELDS, ("mname", "rname", "serial")):
        return None
    values: dict[str, Any] = {"refresh": 3600, "retry": 600, "expire": 604800, "minimum": 60, "ttl": 3600}
    ok = True
    for key in ("mname", "rname"):
        if key in soa:
            values[key] = _name(ctx, origin, soa[key], _line(soa, key), f"soa.{key}")
            ok &= values[key] is not None
    for key in ("serial", "refresh", "retry", "expire", "minimum", "ttl"):
        if key in soa:
            values[key] = _int(ctx, soa, key, f"soa.{key}", 0, 2**32 - 1 if key == "serial" else 2**31 - 1)
            ok &= values[key] is not None
    return SOA(**values) if ok and all(k in values for k in ("mname", "rname", "serial")) else None


def _nameservers(ctx: _Ctx, doc: LineMap, origin: str) -> tuple[NameServer, ...]:
    items = _list(ctx, doc, "nameservers", "nameservers")
    result = []
    for i, item in enumerate(items or ()):
        field = f"nameservers[{i}]"
        if isinstance(item, str):
            item = LineMap({"name": item})
            item.line = items.line_of(i)
            item.key_lines = {}
        if not _check_keys(ctx, item, field, ("name", "glue"), ("name",)):
            continue
        name = _name(ctx, origin, item["name"], _line(item, "name"), f"{field}.name") if "name" in item else None
        glue = []
        if "glue" in item:
            addrs = _list(ctx, item, "glue", f"{field}.glue") or ()
            for j in range(len(addrs)):
                address = _ip(ctx, addrs, j, f"{field}.glue[{j}]")
                if address is not None:
                    glue.append(address)
        if name is not None:
            if glue and not (name == origin or name.endswith("." + origin)):
                ctx.error(_line(item, "glue"), f"{field}.glue", f"glue for {name!r}, which is outside the zone")
            result.append(NameServer(name, tuple(glue)))
    if not result and not ctx.errors:
        ctx.error(doc.line_of("nameservers"), "nameservers", "at least one name server is required")
    return tuple(result)


# --- regions and checks ----------------------------------------------------------------

_REGION_KEYS = ("coordinates", "endpoints", "bias", "weight", "min_healthy", "check", "balancer", "capacity_url")


def _regions(ctx: _Ctx, regions: Any) -> dict[str, Region]:
    if not isinstance(regions, dict):
        ctx.error(getattr(regions, "line", 0), "regions", f"expected a mapping, got {_show(regions)}")
        return {}
    result = {}
    for name, spec in regions.items():
        field = f"regions.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
            ctx.error(_line(regions, name), field, "region names are letters, digits, '-', '_' and '.'")
            continue
        if not _check_keys(ctx, spec, field, _REGION_KEYS, ("coordinates", "endpoints")):
            continue
        region = _region(ctx, name, spec, field)
        if region is not None:
            result[name] = region
    return result


def _region(ctx: _Ctx, name: str, spec: LineMap, field: str) -> Region | None:
    ok = True
    lat = lon = None
    if "coordinates" in spec:
        coords = spec["coordinates"]
        if not isinstance(coords, list) or len(coords) != 2:
            ctx.error(_line(spec, "coordinates"), f"{field}.coordinates", "expected [latitude, longitude]")
            ok = False
        else:
            lat = _float(ctx, coords, 0, f"{field}.coordinates[0]", -90, 90)
            lon = _float(ctx, coords, 1, f"{field}.coordinates[1]", -180, 180)
            ok &= lat is not None and lon is not None
    endpoints = []
    if "endpoints" in spec:
        items = _list(ctx, spec, "endpoints", f"{field}.endpoints") or LineList()
        for i, item in enumerate(items):
            efield = f"{field}.endpoints[{i}]"
            if isinstance(item, dict):
                if not _check_keys(ctx, item, efield, ("address", "weight", "check"), ("address",)):
                    ok = False
                    continue
                address = _ip(ctx, item, "address", f"{efield}.address") if "address" in item else None
                weight = _int(ctx, item, "weight", f"{efield}.weight", 0, 65535) if "weight" in item else 1
                check = _check(ctx, item["check"], f"{efield}.check") if "check" in item else None
                if address is None or weight is None:
                    ok = False
                    continue
                endpoints.append(Endpoint(address, weight, check))
            else:
                address = _ip(ctx, items, i, efield)
                if address is None:
                    ok = False
                    continue
                endpoints.append(Endpoint(address))
        if not endpoints and ok:
            ctx.error(_line(spec, "endpoints"), f"{field}.endpoints", "a region needs at least one endpoint")
            ok = False
        seen = set()
        for i, endpoint in enumerate(endpoints):
            if endpoint.address in seen:
                ctx.error(items.line_of(i), f"{field}.endpoints[{i}]", f"duplicate endpoint {endpoint.address}")
                ok = False
            seen.add(endpoint.address)
    bias = _float(ctx, spec, "bias", f"{field}.bias", -20000, 20000) if "bias" in spec else 0.0
    weight = _int(ctx, spec, "weight", f"{field}.weight", 0, 65535) if "weight" in spec else 1
    min_healthy = _int(ctx, spec, "min_healthy", f"{field}.min_healthy", 0, 65535) if "min_healthy" in spec else 1
    check = _check(ctx, spec["check"], f"{field}.check") if "check" in spec else None
    balancer = _check(ctx, spec["balancer"], f"{field}.balancer", balancer=True) if "balancer" in spec else None
    capacity_url = _str(ctx, spec, "capacity_url", f"{field}.capacity_url") if "capacity_url" in spec else None
    if min_healthy is not None and endpoints and min_healthy > len(endpoints):
        ctx.error(_line(spec, "min_healthy"), f"{field}.min_healthy", f"{min_healthy} is more than the {len(endpoints)} endpoints")
        ok = False
    if not ok or None in (lat, lon, bias, weight, min_healthy):
        return None
    return Region(
        name=name,
        latitude=lat,
        longitude=lon,
        endpoints=tuple(endpoints),
        bias_km=bias,
        weight=weight,
        min_healthy=min_healthy,
        check=check,
        balancer=balancer,
        capacity_url=capacity_url,
    )


_CHECK_KEYS = (
    "type", "host", "port", "path", "method", "host_header", "expect", "body_contains",
    "verify_tls", "qname", "command", "interval", "timeout", "jitter", "fall", "rise", "observers",
)


_POOL_CHECK_KEYS = ("type", "url", "verify_tls", "interval", "timeout", "jitter", "fall", "rise", "observers")
_POOL_KEYS = {
    "haproxy": (("backend", "min_up", "capacity"), ("url", "backend")),
    "nginx": (("capacity",), ("url", "capacity")),
    "envoy": (("cluster", "min_up", "capacity"), ("url", "cluster")),
}
"""Per balancer status type: its own keys, and the required ones."""


def _url(ctx: _Ctx, container: Any, key: Any, field: str) -> str | None:
    value = _str(ctx, container, key, field)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        ctx.error(_line(container, key), field, f"{value!r} is not an http:// or https:// URL")
        return None
    return value


def _check(ctx: _Ctx, spec: Any, field: str, balancer: bool = False) -> Check | None:
    kind = spec.get("type") if isinstance(spec, dict) else None
    pool = balancer and kind in BALANCER_STATUS_KINDS
    own, required = _POOL_KEYS[kind] if pool else ((), ("type",))
    if not _check_keys(ctx, spec, field, _POOL_CHECK_KEYS + own if pool else _CHECK_KEYS, required):
        return None
    values: dict[str, Any] = {}
    ok = True

    def take(key: str, parse: Callable[..., Any], *args: Any, attr: str | None = None) -> None:
        nonlocal ok
        if key in spec:
            value = parse(ctx, spec, key, f"{field}.{key}", *args)
            if value is None:
                ok = False
            else:
                values[attr or key] = value

    kinds = ("http", "https", "tcp", "dns", "exec", *(BALANCER_STATUS_KINDS if balancer else ()))
    if kind not in kinds:
        where = " (haproxy, nginx and envoy read a balancer's status: only under a region's balancer:)" \
            if kind in BALANCER_STATUS_KINDS else ""
        ctx.error(_line(spec, "type"), f"{field}.type", f"{kind!r} is not one of {', '.join(kinds)}{where}")
        return None
    values["kind"] = kind
    if pool:
        take("url", _url)
        take("backend", _str, attr="pool")
        take("cluster", _str, attr="pool")
        take("min_up", _int, 0, 100_000)
        take("capacity", _int, 1, 1_000_000_000)
    take("host", _str)
    take("port", _int, 1, 65535)
    take("path", _str)
    take("method", _str)
    take("host_header", _str)
    take("body_contains", _str)
    take("qname", _str)
    take("interval", _float, 0.05, 3600)
    take("timeout", _float, 0.01, 600)
    take("jitter", _float, 0, 3600)
    take("fall", _int, 1, 100)
    take("rise", _int, 1, 100)
    take("observers", _int, 1, 1000)
    if "verify_tls" in spec:
        if isinstance(spec["verify_tls"], bool):
            values["verify_tls"] = spec["verify_tls"]
        else:
            ctx.error(_line(spec, "verify_tls"), f"{field}.verify_tls", "expected true or false")
            ok = False
    if "expect" in spec:
        codes = _list(ctx, spec, "expect", f"{field}.expect") or ()
        parsed = [_int(ctx, codes, i, f"{field}.expect[{i}]", 100, 599) for i in range(len(codes))]
        if None in parsed or not parsed:
            ok = False
        else:
            values["expect_status"] = tuple(parsed)
    if "command" in spec:
        command = spec["command"]
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            ctx.error(_line(spec, "command"), f"{field}.command", "expected a command line (string or list of strings)")
            ok = False
        else:
            values["command"] = tuple(command)
    if kind == "exec" and "command" not in spec:
        ctx.error(spec.line, f"{field}.command", "is required for an exec check")
        ok = False
    if kind == "dns" and "qname" not in spec:
        ctx.error(spec.line, f"{field}.qname", "is required for a dns check")
        ok = False
    if ok and values.get("timeout", 2.0) > values.get("interval", 5.0):
        ctx.error(_line(spec, "timeout"), f"{field}.timeout", "must not exceed the interval")
        ok = False
    return Check(**values) if ok else None


# --- records -----------------------------------------------------------------------------

_STEERED_KEYS = ("ttl", "steer", "regions", "default", "fallback", "failover_ttl")


def _records(
    ctx: _Ctx, records: Any, origin: str, regions: dict[str, Region], zone_ttl: int, doc: LineMap
) -> dict[str, Node]:
    if not isinstance(records, dict):
        ctx.error(_line(doc, "records"), "records", f"expected a mapping, got {_show(records)}")
        return {}
    nodes: dict[str, Node] = {}
    for owner, spec in records.items():
        field = f"records.{owner}"
        line = _line(records, owner)
        name = _name(ctx, origin, owner, line, field) if isinstance(owner, str) else None
        if name is None:
            if not isinstance(owner, str):
                ctx.error(line, field, "record names are strings")
            continue
        if not (name == origin or name.endswith("." + origin)):
            ctx.error(line, field, f"{name!r} is outside the zone {origin!r}")
            continue
        if name in nodes:
            ctx.error(line, field, f"{name!r} is defined twice")
            continue
        if not isinstance(spec, dict):
            ctx.error(line, field, f"expected a mapping of record types, got {_show(spec)}")
            continue
        node = _node(ctx, name, spec, field, origin, regions, zone_ttl, line)
        if node is not None:
            nodes[name] = node
    _check_node_rules(ctx, nodes, origin, records)
    return nodes


def _node(
    ctx: _Ctx, name: str, spec: LineMap, field: str, origin: str, regions: dict[str, Region], zone_ttl: int, line: int
) -> Node | None:
    allowed = set(PLAIN_TYPES) | set(_STEERED_KEYS)
    if not _check_keys(ctx, spec, field, allowed):
        return None
    ttl = _int(ctx, spec, "ttl", f"{field}.ttl", 0, 2**31 - 1) if "ttl" in spec else zone_ttl
    if ttl is None:
        return None
    steered = None
    steer_keys = [k for k in _STEERED_KEYS if k in spec and k != "ttl"]
    if steer_keys:
        if "steer" not in spec:
            ctx.error(_line(spec, steer_keys[0]), f"{field}.{steer_keys[0]}", "only meaningful with 'steer'")
            return None
        for rtype in ("A", "AAAA", "CNAME"):
            if rtype in spec:
                ctx.error(_line(spec, rtype), f"{field}.{rtype}", "a steered name gets its A/AAAA from its regions")
                return None
        steered = _steered(ctx, spec, field, regions)
        if steered is None:
            return None
    rrsets = []
    for rtype in PLAIN_TYPES:
        if rtype in spec:
            rrset = _rrset(ctx, spec, rtype, f"{field}.{rtype}", origin, ttl)
            if rrset is None:
                return None
            rrsets.append(rrset)
    if not rrsets and steered is None:
        ctx.error(line, field, "has no records")
        return None
    return Node(name=name, rrsets=tuple(rrsets), steered=steered, ttl=ttl, line=line)


def _check_node_rules(ctx: _Ctx, nodes: dict[str, Node], origin: str, records: LineMap) -> None:
    """Rules across names: CNAME stands alone; nothing lives below a delegation."""
    cuts = [n for n, node in nodes.items() if n != origin and any(r.rtype == "NS" for r in node.rrsets)]
    for name, node in nodes.items():
        types = {r.rtype for r in node.rrsets}
        owner_key = next((k for k in records if isinstance(k, str) and _norm(k, origin) == name), name)
        line = _line(records, owner_key)
        if "CNAME" in types and (len(types) > 1 or node.steered):
            ctx.error(line, f"records.{owner_key}", "a CNAME cannot stand beside other records")
        if name == origin and "CNAME" in types:
            ctx.error(line, f"records.{owner_key}", "the apex cannot be a CNAME")
        if name == origin and "NS" in types:
            ctx.error(line, f"records.{owner_key}.NS", "apex NS records come from 'nameservers'")
        for cut in cuts:
            if name.endswith("." + cut) and not _is_glue(node, nodes[cut]):
                ctx.error(line, f"records.{owner_key}", f"is below the delegation {cut!r}")
        if name in cuts and types - {"NS", "A", "AAAA"}:
            ctx.error(line, f"records.{owner_key}", "a delegation point holds only NS (and glue)")


def _is_glue(node: Node, cut: Node) -> bool:
    """Addresses of a name server of the cut, below it: glue, which referrals need (RFC 9471)."""
    targets = {v for r in cut.rrsets if r.rtype == "NS" for v in r.values}
    types = {r.rtype for r in node.rrsets}
    return node.name in targets and node.steered is None and types <= {"A", "AAAA"}


def _norm(key: str, origin: str) -> str:
    key = key.lower()
    if key == "@":
        return origin
    return key[:-1] if key.endswith(".") else f"{key}.{origin}"


def _rrset(ctx: _Ctx, spec: LineMap, rtype: str, field: str, origin: str, ttl: int) -> RRset | None:
    items = _list(ctx, spec, rtype, field)
    if items is None:
        return None
    if not items:
        ctx.error(_line(spec, rtype), field, "is empty")
        return None
    if rtype == "CNAME" and len(items) != 1:
        ctx.error(_line(spec, rtype), field, "a CNAME has exactly one target")
        return None
    values = []
    for i, _item in enumerate(items):
        value = _rdata(ctx, rtype, items, i, f"{field}[{i}]" if len(items) > 1 or isinstance(spec[rtype], list) else field, origin)
        if value is None:
            return None
        if value in values:
            ctx.error(items.line_of(i), f"{field}[{i}]", "duplicate value")
            return None
        values.append(value)
    return RRset(rtype, ttl, tuple(values))


def _rdata(ctx: _Ctx, rtype: str, items: LineList, i: int, field: str, origin: str) -> Any:
    item = items[i]
    line = items.line_of(i)
    if rtype == "A":
        value = _ip(ctx, items, i, field)
        if value is not None and value.version != 4:
            ctx.error(line, field, f"{item!r} is not an IPv4 address")
            return None
        return value
    if rtype == "AAAA":
        value = _ip(ctx, items, i, field)
        if value is not None and value.version != 6:
            ctx.error(line, field, f"{item!r} is not an IPv6 address")
            return None
        return value
    if rtype in ("CNAME", "NS"):
        return _name(ctx, origin, item, line, field)
    if rtype == "TXT":
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            text = str(item)
            if len(text.encode()) > 65000:
                ctx.error(line, field, "text is too long")
                return None
            return text
        ctx.error(line, field, f"{_show(item)} is not text")
        return None
    if rtype == "MX":
        return _fields(ctx, item, line, field, origin, (("preference", "u16"), ("exchange", "name")))
    if rtype == "SRV":
        return _fields(
            ctx, item, line, field, origin,
            (("priority", "u16"), ("weight", "u16"), ("port", "u16"), ("target", "name")),
        )
    if rtype == "CAA":
        value = _fields(ctx, item, line, field, origin, (("flags", "u8"), ("tag", "str"), ("value", "str")))
        if value is not None and not re.match(r"^[A-Za-z0-9]+$", value[1]):
            ctx.error(line, field, f"CAA tag {value[1]!r} must be letters and digits")
            return None
        return value
    raise AssertionError(rtype)


def _fields(ctx: _Ctx, item: Any, line: int, field: str, origin: str, spec: tuple[tuple[str, str], ...]):
    """A record with several fields, given as a mapping or as one space-separated string."""
    names = [n for n, _ in spec]
    if isinstance(item, str):
        parts = item.split(None, len(spec) - 1)
        if len(parts) != len(spec):
            ctx.error(line, field, f"expected {len(spec)} fields ({' '.join(names)}), got {item!r}")
            return None
        mapping = LineMap(zip(names, parts, strict=True))
        mapping.line = line
        mapping.key_lines = {}
        from_text = True
    elif isinstance(item, dict):
        if not _check_keys(ctx, item, field, names, names) or any(n not in item for n in names):
            return None
        mapping = item
        from_text = False
    else:
        ctx.error(line, field, f"expected a mapping with {', '.join(names)}")
        return None
    result = []
    for key, kind in spec:
        value = mapping[key]
        if kind in ("u16", "u8"):
            if from_text and isinstance(value, str) and value.isdigit():
                value = int(value)
                mapping[key] = value
            parsed = _int(ctx, mapping, key, f"{field}.{key}", 0, 65535 if kind == "u16" else 255)
        elif kind == "name":
            parsed = _name(ctx, origin, value, _line(mapping, key), f"{field}.{key}")
        else:
            parsed = str(value).strip('"') if isinstance(value, str | int) and not isinstance(value, bool) else None
            if parsed is None:
                ctx.error(_line(mapping, key), f"{field}.{key}", f"{_show(value)} is not text")
        if parsed is None:
            return None
        result.append(parsed)
    return tuple(result)


# --- steering -----------------------------------------------------------------------------


def _region_names(ctx: _Ctx, spec: Any, key: Any, field: str, regions: dict[str, Region]) -> tuple[str, ...] | None:
    items = _list(ctx, spec, key, field)
    if items is None:
        return None
    names = []
    for i, item in enumerate(items):
        if item not in regions:
            where = f"{field}[{i}]" if isinstance(spec[key], list) else field
            known = ", ".join(regions) or "none defined"
            ctx.error(items.line_of(i), where, f"{item!r} is not a region of this zone (regions: {known})")
            return None
        names.append(item)
    return tuple(names)


def _steered(ctx: _Ctx, spec: LineMap, field: str, regions: dict[str, Region]) -> Steered | None:
    if not regions:
        ctx.error(_line(spec, "steer"), f"{field}.steer", "a steered name needs the zone to define regions")
        return None
    candidates = tuple(regions)
    if "regions" in spec:
        candidates = _region_names(ctx, spec, "regions", f"{field}.regions", regions)
        if candidates is None:
            return None
    default = ()
    if "default" in spec:
        default = _region_names(ctx, spec, "default", f"{field}.default", regions)
    fallback = ()
    if "fallback" in spec:
        fallback = _region_names(ctx, spec, "fallback", f"{field}.fallback", regions)
    failover_ttl = (
        _int(ctx, spec, "failover_ttl", f"{field}.failover_ttl", 0, 2**31 - 1) if "failover_ttl" in spec else None
    )
    steps = _list(ctx, spec, "steer", f"{field}.steer")
    if steps is None or default is None or fallback is None:
        return None
    if not steps:
        ctx.error(_line(spec, "steer"), f"{field}.steer", "the chain is empty")
        return None
    chain = []
    for i, _item in enumerate(steps):
        step = _step(ctx, steps, i, f"{field}.steer[{i}]", regions)
        if step is None:
            return None
        chain.append(step)
    if "failover_ttl" in spec and failover_ttl is None:
        return None
    return Steered(
        chain=tuple(chain),
        candidates=candidates,
        default=default,
        fallback=fallback,
        failover_ttl=failover_ttl,
    )


def _step(ctx: _Ctx, steps: LineList, i: int, field: str, regions: dict[str, Region]) -> Step | None:
    item = steps[i]
    line = steps.line_of(i)
    if isinstance(item, str):
        kind, params, container = item, None, None
    elif isinstance(item, dict) and len(item) == 1:
        kind, params = next(iter(item.items()))
        container = item
    else:
        ctx.error(line, field, "a step is a name or a mapping of one name to its parameters")
        return None
    if kind not in STEP_KINDS:
        ctx.error(line, field, f"unknown step {kind!r} (steps: {', '.join(STEP_KINDS)})")
        return None
    field = f"{field}.{kind}" if container is not None else field
    if kind in ("healthy", "geo_proximity"):
        if params is not None:
            ctx.error(line, field, "takes no parameters")
            return None
        return Step(kind)
    if kind == "limit":
        if container is None:
            ctx.error(line, field, "limit needs a number: {limit: N}")
            return None
        n = _int(ctx, container, kind, field, 1, 64)
        return Step(kind, n) if n is not None else None
    if kind == "weighted":
        if params is None:
            return Step(kind, None)
        if not isinstance(params, dict):
            ctx.error(line, field, "expected a mapping of region to weight")
            return None
        weights = {}
        for name in params:
            if name not in regions:
                ctx.error(_line(params, name), f"{field}.{name}", f"{name!r} is not a region of this zone")
                return None
            w = _int(ctx, params, name, f"{field}.{name}", 0, 65535)
            if w is None:
                return None
            weights[name] = w
        return Step(kind, tuple(weights.items()))
    if kind == "failover":
        if container is None:
            ctx.error(line, field, "failover needs its priority order: {failover: [r1, r2, ...]}")
            return None
        order = _region_names(ctx, container, kind, field, regions)
        return Step(kind, order) if order is not None else None
    if kind == "capacity":
        threshold = _step_number(ctx, params, field, "threshold", 0.8, 0.0, 1.0)
        return Step(kind, threshold) if threshold is not None else None
    if kind == "latency":
        tolerance = _step_number(ctx, params, field, "tolerance_ms", 0.0, 0, 100000)
        return Step(kind, (tolerance, None)) if tolerance is not None else None
    if kind == "geolocation":
        return _geolocation(ctx, params, line, field, regions)
    raise AssertionError(kind)


def _step_number(ctx: _Ctx, params: Any, field: str, key: str, default: float, lo: float, hi: float) -> float | None:
    """A step whose only parameter is one optional number (`{capacity: {threshold: 0.9}}`)."""
    if params is None:
        return default
    if not _check_keys(ctx, params, field, (key,)):
        return None
    if key not in params:
        return default
    return _float(ctx, params, key, f"{field}.{key}", lo, hi)


def _geolocation(ctx: _Ctx, params: Any, line: int, field: str, regions: dict[str, Region]) -> Step | None:
    if not _check_keys(ctx, params, field, ("rules", "default"), ("rules",)) or "rules" not in params:
        return None
    rules_in = _list(ctx, params, "rules", f"{field}.rules")
    if rules_in is None:
        return None
    rules = []
    for i, rule in enumerate(rules_in):
        rfield = f"{field}.rules[{i}]"
        if not _check_keys(ctx, rule, rfield, ("match", "regions"), ("match", "regions")) or not (
            "match" in rule and "regions" in rule
        ):
            return None
        matches = _list(ctx, rule, "match", f"{rfield}.match")
        targets = _region_names(ctx, rule, "regions", f"{rfield}.regions", regions)
        if matches is None or targets is None:
            return None
        continents, countries, subdivisions, networks = set(), set(), set(), []
        for j, match in enumerate(matches):
            mfield = f"{rfield}.match[{j}]"
            parsed = _geo_match(str(match))
            if parsed is None:
                ctx.error(
                    matches.line_of(j), mfield,
                    f"{match!r} is not a continent (EU), continent-country (NA-US), "
                    "country (US), country-subdivision (NA-US-CA or US-CA) or CIDR",
                )
                return None
            kind, value = parsed
            if kind == "network":
                networks.append(value)
            else:
                {"continent": continents, "country": countries, "subdivision": subdivisions}[kind].add(value)
        rules.append(
            GeoRule(
                continents=frozenset(continents),
                countries=frozenset(countries),
                subdivisions=frozenset(subdivisions),
                networks=tuple(networks),
                regions=targets,
                label=", ".join(str(m) for m in matches),
            )
        )
    default: tuple[str, ...] = ()
    if "default" in params:
        default = _region_names(ctx, params, "default", f"{field}.default", regions)
        if default is None:
            return None
    return Step("geolocation", (tuple(rules), default))


def _geo_match(text: str) -> tuple[str, Any] | None:
    """Parse one geolocation match in octoDNS's geo-code style, or a CIDR."""
    if "/" in text or ":" in text:
        try:
            return "network", ipaddress.ip_network(text, strict=True)
        except ValueError:
            return None
    parts = text.upper().split("-")
    if len(parts) == 1:
        if parts[0] in _CONTINENTS:
            return "continent", parts[0]
        if re.match(r"^[A-Z]{2}$", parts[0]):
            return "country", parts[0]
        return None
    if len(parts) == 2:
        if parts[0] in _CONTINENTS and re.match(r"^[A-Z]{2}$", parts[1]):
            return "country", parts[1]
        if re.match(r"^[A-Z]{2}$", parts[0]) and re.match(r"^[A-Z0-9]{1,3}$", parts[1]):
            return "subdivision", f"{parts[0]}-{parts[1]}"
        return None
    if len(parts) == 3 and parts[0] in _CONTINENTS and re.match(r"^[A-Z]{2}$", parts[1]) and re.match(
        r"^[A-Z0-9]{1,3}$", parts[2]
    ):
        return "subdivision", f"{parts[1]}-{parts[2]}"
    return None
