"""Health checks as a zone file writes them: a region's or an endpoint's `check:`, a
region's `balancer:`; one reader, `read_check`, for every place a check is written."""

from __future__ import annotations

from typing import Any

from geodns.config.fields import (
    Ctx,
    check_keys,
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


def read_check(ctx: Ctx, spec: Any, field: str, balancer: bool = False) -> Check | None:
    """A check mapping, or None with its errors in `ctx`. `balancer`: a region's `balancer:`,
    which may also read HAProxy, nginx or Envoy's own status."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    pool = balancer and kind in BALANCER_STATUS_KINDS
    own, required = POOL_KEYS[kind] if pool else ((), ("type",))
    if not check_keys(ctx, spec, field, POOL_CHECK_KEYS + own if pool else CHECK_KEYS, required):
        return None
    kinds = (*PROBE_KINDS, *(BALANCER_STATUS_KINDS if balancer else ()))
    if kind not in kinds:
        where = " (haproxy, nginx and envoy read a balancer's status: only under a region's balancer:)" \
            if kind in BALANCER_STATUS_KINDS else ""
        ctx.error(line_at(spec, "type"), f"{field}.type", f"{kind!r} is not one of {', '.join(kinds)}{where}")
        return None
    values: dict[str, Any] = {"kind": kind}
    fields = (*_POOL_FIELDS, *_FIELDS) if pool else _FIELDS
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
        ctx.error(spec.line, f"{field}.command", "is required for an exec check")
        ok = False
    if kind == "dns" and "qname" not in spec:
        ctx.error(spec.line, f"{field}.qname", "is required for a dns check")
        ok = False
    if ok and values.get("timeout", 2.0) > values.get("interval", 5.0):
        ctx.error(line_at(spec, "timeout"), f"{field}.timeout", "must not exceed the interval")
        ok = False
    return Check(**values) if ok else None


_POOL_FIELDS = (
    ("url", read_url, (), None),
    ("backend", read_str, (), "pool"),
    ("cluster", read_str, (), "pool"),
    ("min_up", read_int, (0, 100_000), None),
    ("capacity", read_int, (1, 1_000_000_000), None),
)
"""(key, reader, its bounds, Check attribute) of a balancer status check's own keys."""
_FIELDS = (
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
