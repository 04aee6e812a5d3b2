"""Steering as a zone file writes it: a name's `steer:` chain, its candidate, default and
fallback regions, and each step's parameters."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from geodns.config._yaml import LineList, LineMap
from geodns.config.fields import Ctx, check_keys, line_at, read_float, read_int, read_list
from geodns.config.model import GeoRule, Region, Steered, Step

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
STEERED_KEYS = ("ttl", "steer", "regions", "default", "fallback", "failover_ttl")
"""Keys of a steered name (`ttl` is any name's)."""
STEP_NUMBERS = {"capacity": ("threshold", 0.8, 0.0, 1.0), "latency": ("tolerance_ms", 0.0, 0, 100000)}
"""Steps whose one parameter is an optional number: (its key, default, low, high)."""
GEOLOCATION_KEYS = ("rules", "default")
RULE_KEYS = ("match", "regions")
"""Keys of one geolocation rule (both required)."""
_CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}


def region_names(ctx: Ctx, spec: Any, key: Any, field: str, regions: dict[str, Region]) -> tuple[str, ...] | None:
    items = read_list(ctx, spec, key, field)
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


def read_steered(ctx: Ctx, spec: LineMap, field: str, regions: dict[str, Region]) -> Steered | None:
    if not regions:
        ctx.error(line_at(spec, "steer"), f"{field}.steer", "a steered name needs the zone to define regions")
        return None
    candidates = tuple(regions)
    if "regions" in spec:
        candidates = region_names(ctx, spec, "regions", f"{field}.regions", regions)
        if candidates is None:
            return None
    default = ()
    if "default" in spec:
        default = region_names(ctx, spec, "default", f"{field}.default", regions)
    fallback = ()
    if "fallback" in spec:
        fallback = region_names(ctx, spec, "fallback", f"{field}.fallback", regions)
    failover_ttl = (
        read_int(ctx, spec, "failover_ttl", f"{field}.failover_ttl", 0, 2**31 - 1) if "failover_ttl" in spec else None
    )
    steps = read_list(ctx, spec, "steer", f"{field}.steer")
    if steps is None or default is None or fallback is None:
        return None
    if not steps:
        ctx.error(line_at(spec, "steer"), f"{field}.steer", "the chain is empty")
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


def _step(ctx: Ctx, steps: LineList, i: int, field: str, regions: dict[str, Region]) -> Step | None:
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
        n = read_int(ctx, container, kind, field, 1, 64)
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
                ctx.error(line_at(params, name), f"{field}.{name}", f"{name!r} is not a region of this zone")
                return None
            w = read_int(ctx, params, name, f"{field}.{name}", 0, 65535)
            if w is None:
                return None
            weights[name] = w
        return Step(kind, tuple(weights.items()))
    if kind == "failover":
        if container is None:
            ctx.error(line, field, "failover needs its priority order: {failover: [r1, r2, ...]}")
            return None
        order = region_names(ctx, container, kind, field, regions)
        return Step(kind, order) if order is not None else None
    if kind in STEP_NUMBERS:
        number = _step_number(ctx, params, field, *STEP_NUMBERS[kind])
        if number is None:
            return None
        return Step(kind, number if kind == "capacity" else (number, None))
    if kind == "geolocation":
        return _geolocation(ctx, params, line, field, regions)
    raise AssertionError(kind)


def _step_number(ctx: Ctx, params: Any, field: str, key: str, default: float, lo: float, hi: float) -> float | None:
    """A step whose only parameter is one optional number (`{capacity: {threshold: 0.9}}`)."""
    if params is None:
        return default
    if not check_keys(ctx, params, field, (key,)):
        return None
    if key not in params:
        return default
    return read_float(ctx, params, key, f"{field}.{key}", lo, hi)


def _geolocation(ctx: Ctx, params: Any, line: int, field: str, regions: dict[str, Region]) -> Step | None:
    if not check_keys(ctx, params, field, GEOLOCATION_KEYS, ("rules",)) or "rules" not in params:
        return None
    rules_in = read_list(ctx, params, "rules", f"{field}.rules")
    if rules_in is None:
        return None
    rules = []
    for i, rule in enumerate(rules_in):
        rfield = f"{field}.rules[{i}]"
        if not check_keys(ctx, rule, rfield, RULE_KEYS, RULE_KEYS) or not (
            "match" in rule and "regions" in rule
        ):
            return None
        matches = read_list(ctx, rule, "match", f"{rfield}.match")
        targets = region_names(ctx, rule, "regions", f"{rfield}.regions", regions)
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
        default = region_names(ctx, params, "default", f"{field}.default", regions)
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
