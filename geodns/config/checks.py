"""Health checks as a zone file writes them: a region's or an endpoint's `check:`, a
region's `balancer:`; one reader, `read_check`, for every place a check is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geodns.config._yaml import LineMap
from geodns.config.errors import ConfigError
from geodns.config.fields import (
    Ctx,
    check_keys,
    join,
    line_at,
    read_bool,
    read_float,
    read_int,
    read_list,
    read_str,
    read_url,
    take,
)
from geodns.config.model import BALANCER_STATUS_KINDS, Check

PROBE_KINDS = ("http", "https", "tcp", "dns", "exec")
"""Check types that probe an address."""

CHECK_KEYS = (
    "type", "host", "port", "path", "method", "host_header", "expect", "body_contains",
    "verify_tls", "qname", "command", "interval", "timeout", "jitter", "fall", "rise", "observers",
)
POOL_CHECK_KEYS = ("type", "url", "verify_tls", "interval", "timeout", "jitter", "fall", "rise", "observers")
"""Keys of a check that reads a balancer's status page (`BALANCER_STATUS_KINDS`), besides its own."""
POOL_KEYS = {
    "haproxy": (("backend", "min_up", "capacity"), ("url", "backend")),
    "nginx": (("capacity",), ("url", "capacity")),
    "envoy": (("cluster", "min_up", "capacity"), ("url", "cluster")),
}
"""Per balancer status type: its own keys, and the required ones."""


@dataclass(frozen=True, slots=True)
class Place:
    """Where a check is written, and what it may say there."""

    kinds: tuple[str, ...]
    """The types it may have."""
    keys: tuple[str, ...] = CHECK_KEYS
    """Its keys when it probes (a status check has POOL_CHECK_KEYS and its type's own)."""
    default_kind: str | None = None
    """The type when none is given (None: `type` is required)."""
    jitter: float = 0.5
    """`jitter` when none is given."""
    old_spelling: bool = False
    """Accept `kind:` and `expect_status:` (the balancer's first spelling), with a warning."""


ZONE = Place(PROBE_KINDS)
"""A region's or an endpoint's `check:`."""
REGION_BALANCER = Place((*PROBE_KINDS, *BALANCER_STATUS_KINDS))
"""A region's `balancer:`: a probe, or HAProxy's, nginx's or Envoy's own status."""
POOL = Place(
    ("http", "https", "tcp"),
    ("type", "port", "path", "method", "host_header", "expect", "body_contains", "verify_tls",
     "interval", "timeout", "jitter", "fall", "rise"),
    default_kind="http",
    jitter=0.2,
    old_spelling=True,
)
"""A `geodns balance` pool's `check:`, run against each of its backends."""

OLD_SPELLING = {"kind": "type", "expect_status": "expect"}


def read_check(ctx: Ctx, spec: Any, field: str, place: Place = ZONE) -> Check | None:
    """A check mapping, or None with its errors in `ctx` (and a warning there for an old
    spelling)."""
    if place.old_spelling and isinstance(spec, dict) and OLD_SPELLING.keys() & spec.keys():
        spec = _respell(ctx, spec, field)
    kind = spec.get("type", place.default_kind) if isinstance(spec, dict) else None
    status = kind in BALANCER_STATUS_KINDS and kind in place.kinds
    own, required = POOL_KEYS[kind] if status else ((), () if place.default_kind else ("type",))
    if not check_keys(ctx, spec, field, POOL_CHECK_KEYS + own if status else place.keys, required):
        return None
    if kind not in place.kinds:
        where = " (haproxy, nginx and envoy read a balancer's status: only under a region's balancer:)" \
            if kind in BALANCER_STATUS_KINDS else ""
        ctx.error(line_at(spec, "type"), f"{field}.type", f"{kind!r} is not one of {', '.join(place.kinds)}{where}")
        return None
    values: dict[str, Any] = {"kind": kind, "jitter": place.jitter}
    fields = (*STATUS_FIELDS, *CHECK_FIELDS) if status else CHECK_FIELDS
    ok = all([take(ctx, spec, field, values, key, reader, *args, attr=attr) for key, reader, args, attr in fields])
    if "expect" in spec:
        codes = read_list(ctx, spec, "expect", f"{field}.expect") or ()
        parsed = [read_int(ctx, codes, i, f"{field}.expect[{i}]", 100, 599) for i in range(len(codes))]
        if None in parsed or not parsed:
            ok = False
        else:
            values["expect_status"] = tuple(parsed)
    if "command" in spec:
        command = spec["command"]
        if isinstance(command, str):
            command = command.split()
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            ctx.error(line_at(spec, "command"), f"{field}.command", "expected a command line (string or list of strings)")
            ok = False
        else:
            values["command"] = tuple(command)
    if kind == "exec" and "command" not in spec:
        ctx.error(getattr(spec, "line", 0), f"{field}.command", "is required for an exec check")
        ok = False
    if kind == "dns" and "qname" not in spec:
        ctx.error(getattr(spec, "line", 0), f"{field}.qname", "is required for a dns check")
        ok = False
    if ok and values.get("timeout", 2.0) > values.get("interval", 5.0):
        ctx.error(line_at(spec, "timeout"), f"{field}.timeout", "must not exceed the interval")
        ok = False
    return Check(**values) if ok else None


STATUS_FIELDS = (
    ("url", read_url, (), None),
    ("backend", read_str, (), "pool"),
    ("cluster", read_str, (), "pool"),
    ("min_up", read_int, (0, 100_000), None),
    ("capacity", read_int, (1, 1_000_000_000), None),
)
"""(key, reader, its bounds, Check attribute) of a balancer status check's own keys."""
CHECK_FIELDS = (
    ("host", read_str, (), None),
    ("port", read_int, (1, 65535), None),
    ("path", read_str, (), None),
    ("method", read_str, (), None),
    ("host_header", read_str, (), None),
    ("body_contains", read_str, (), None),
    ("qname", read_str, (), None),
    ("interval", read_float, (0.05, 3600), None),
    ("timeout", read_float, (0.01, 600), None),
    ("jitter", read_float, (0, 3600), None),
    ("fall", read_int, (1, 100), None),
    ("rise", read_int, (1, 100), None),
    ("observers", read_int, (1, 1000), None),
    ("verify_tls", read_bool, (), None),
)
"""(key, reader, its bounds, Check attribute) of every other key, in the order errors are reported."""


def _respell(ctx: Ctx, spec: Any, field: str) -> LineMap:
    """`spec` with the old spelling's keys renamed, each on its own line; one warning."""
    out = LineMap()
    out.line = getattr(spec, "line", 0)
    out.key_lines = {}
    old = [key for key in spec if key in OLD_SPELLING]
    for key, value in spec.items():
        new = OLD_SPELLING.get(key, key)
        if new != key and new in spec:
            ctx.error(line_at(spec, key), join(field, key), f"give {new} (or its old spelling {key}), not both")
            continue
        out[new] = value
        out.key_lines[new] = line_at(spec, key)
    write = " and ".join(f"{OLD_SPELLING[key]}: for {key}:" for key in old)
    ctx.warnings.append(ConfigError(ctx.file, line_at(spec, old[0]), field,
                                    f"old spelling, still accepted: write {write}, as zone files do"))
    return out
