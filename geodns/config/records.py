"""Records as a zone file writes them: each owner name's RRsets (or its steering), and the
rules across names (CNAME stands alone, nothing below a delegation but glue)."""

from __future__ import annotations

import re
from typing import Any

from geodns.config._yaml import LineList, LineMap
from geodns.config.fields import (
    Ctx,
    check_keys,
    domain_name,
    line_at,
    read_int,
    read_ip,
    read_list,
    show,
)
from geodns.config.model import Node, Region, RRset
from geodns.config.steering import STEERED_KEYS, read_steered

PLAIN_TYPES = ("A", "AAAA", "CNAME", "TXT", "MX", "SRV", "CAA", "NS")


def read_records(
    ctx: Ctx, records: Any, origin: str, regions: dict[str, Region], zone_ttl: int, doc: LineMap
) -> dict[str, Node]:
    if not isinstance(records, dict):
        ctx.error(line_at(doc, "records"), "records", f"expected a mapping, got {show(records)}")
        return {}
    nodes: dict[str, Node] = {}
    for owner, spec in records.items():
        field = f"records.{owner}"
        line = line_at(records, owner)
        name = domain_name(ctx, origin, owner, line, field) if isinstance(owner, str) else None
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
            ctx.error(line, field, f"expected a mapping of record types, got {show(spec)}")
            continue
        node = _node(ctx, name, spec, field, origin, regions, zone_ttl, line)
        if node is not None:
            nodes[name] = node
    _check_node_rules(ctx, nodes, origin, records)
    return nodes


def _node(
    ctx: Ctx, name: str, spec: LineMap, field: str, origin: str, regions: dict[str, Region], zone_ttl: int, line: int
) -> Node | None:
    allowed = set(PLAIN_TYPES) | set(STEERED_KEYS)
    if not check_keys(ctx, spec, field, allowed):
        return None
    ttl = read_int(ctx, spec, "ttl", f"{field}.ttl", 0, 2**31 - 1) if "ttl" in spec else zone_ttl
    if ttl is None:
        return None
    steered = None
    steer_keys = [k for k in STEERED_KEYS if k in spec and k != "ttl"]
    if steer_keys:
        if "steer" not in spec:
            ctx.error(line_at(spec, steer_keys[0]), f"{field}.{steer_keys[0]}", "only meaningful with 'steer'")
            return None
        for rtype in ("A", "AAAA", "CNAME"):
            if rtype in spec:
                ctx.error(line_at(spec, rtype), f"{field}.{rtype}", "a steered name gets its A/AAAA from its regions")
                return None
        steered = read_steered(ctx, spec, field, regions)
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


def _check_node_rules(ctx: Ctx, nodes: dict[str, Node], origin: str, records: LineMap) -> None:
    """Rules across names: CNAME stands alone; nothing lives below a delegation."""
    cuts = [n for n, node in nodes.items() if n != origin and any(r.rtype == "NS" for r in node.rrsets)]
    for name, node in nodes.items():
        types = {r.rtype for r in node.rrsets}
        owner_key = next((k for k in records if isinstance(k, str) and _norm(k, origin) == name), name)
        line = line_at(records, owner_key)
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


def _rrset(ctx: Ctx, spec: LineMap, rtype: str, field: str, origin: str, ttl: int) -> RRset | None:
    items = read_list(ctx, spec, rtype, field)
    if items is None:
        return None
    if not items:
        ctx.error(line_at(spec, rtype), field, "is empty")
        return None
    if rtype == "CNAME" and len(items) != 1:
        ctx.error(line_at(spec, rtype), field, "a CNAME has exactly one target")
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


def _rdata(ctx: Ctx, rtype: str, items: LineList, i: int, field: str, origin: str) -> Any:
    item = items[i]
    line = items.line_of(i)
    if rtype in ("A", "AAAA"):
        version = 4 if rtype == "A" else 6
        value = read_ip(ctx, items, i, field)
        if value is not None and value.version != version:
            ctx.error(line, field, f"{item!r} is not an IPv{version} address")
            return None
        return value
    if rtype in ("CNAME", "NS"):
        return domain_name(ctx, origin, item, line, field)
    if rtype == "TXT":
        if isinstance(item, str | int | float) and not isinstance(item, bool):
            text = str(item)
            if len(text.encode()) > 65000:
                ctx.error(line, field, "text is too long")
                return None
            return text
        ctx.error(line, field, f"{show(item)} is not text")
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


def _fields(ctx: Ctx, item: Any, line: int, field: str, origin: str, spec: tuple[tuple[str, str], ...]):
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
        if not check_keys(ctx, item, field, names, names) or any(n not in item for n in names):
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
            parsed = read_int(ctx, mapping, key, f"{field}.{key}", 0, 65535 if kind == "u16" else 255)
        elif kind == "name":
            parsed = domain_name(ctx, origin, value, line_at(mapping, key), f"{field}.{key}")
        else:
            parsed = str(value).strip('"') if isinstance(value, str | int) and not isinstance(value, bool) else None
            if parsed is None:
                ctx.error(line_at(mapping, key), f"{field}.{key}", f"{show(value)} is not text")
        if parsed is None:
            return None
        result.append(parsed)
    return tuple(result)
