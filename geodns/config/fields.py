"""Typed readers for one value of a parsed YAML document, each error with its line.

A reader takes the error collector, the container (a `LineMap` or `LineList`), the
key and the field's dotted path; it returns the value, or records
`file:line: field: message` and returns None, so that a file's every error is
found in one pass.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from geodns.config._yaml import LineList, LineMap
from geodns.config.errors import ConfigError
from geodns.config.model import IPAddress

_LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")


class Ctx:
    """Error collector bound to one file."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []
        """Accepted, but to be told (an old spelling)."""

    def error(self, line: int, field: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, line, field, message))


def line_at(container: Any, key: Any) -> int:
    """The line of `container[key]` (of the container when it does not know)."""
    if isinstance(container, LineMap):
        return container.line_of(key)
    if isinstance(container, LineList) and isinstance(key, int):
        return container.line_of(key)
    return getattr(container, "line", 0)


def join(field: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{field}[{key}]"
    return f"{field}.{key}" if field else str(key)


def show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def check_keys(ctx: Ctx, mapping: Any, field: str, allowed: Iterable[str], required: Iterable[str] = ()) -> bool:
    """Is `mapping` a mapping? Each unknown and each missing key is an error of its own."""
    if not isinstance(mapping, dict):
        ctx.error(getattr(mapping, "line", 0), field, f"expected a mapping, got {show(mapping)}")
        return False
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            ctx.error(line_at(mapping, key), join(field, key), f"unknown key (expected one of: {hint})")
    for key in required:
        if key not in mapping:
            ctx.error(getattr(mapping, "line", 0), join(field, key), "is required")
    return True


def take(
    ctx: Ctx, spec: Any, field: str, values: dict[str, Any], key: str, read: Callable[..., Any], *args: Any, attr: str | None = None
) -> bool:
    """`values[attr or key] = read(ctx, spec, key, field.key, *args)` when `key` is given;
    False when it is given and wrong."""
    if key not in spec:
        return True
    value = read(ctx, spec, key, join(field, key), *args)
    if value is None:
        return False
    values[attr or key] = value
    return True


def read_int(ctx: Ctx, container: Any, key: Any, field: str, lo: int, hi: int) -> int | None:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.error(line_at(container, key), field, f"{show(value)} is not an integer")
        return None
    if not lo <= value <= hi:
        ctx.error(line_at(container, key), field, f"{value} is out of range {lo}..{hi}")
        return None
    return value


def read_float(ctx: Ctx, container: Any, key: Any, field: str, lo: float, hi: float) -> float | None:
    value = container[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        ctx.error(line_at(container, key), field, f"{show(value)} is not a number")
        return None
    if not lo <= value <= hi:
        ctx.error(line_at(container, key), field, f"{value} is out of range {lo}..{hi}")
        return None
    return float(value)


def read_str(ctx: Ctx, container: Any, key: Any, field: str) -> str | None:
    value = container[key]
    if not isinstance(value, str) or not value:
        ctx.error(line_at(container, key), field, f"{show(value)} is not a non-empty string")
        return None
    return value


def read_bool(ctx: Ctx, container: Any, key: Any, field: str) -> bool | None:
    value = container[key]
    if not isinstance(value, bool):
        ctx.error(line_at(container, key), field, "expected true or false")
        return None
    return value


def read_ip(ctx: Ctx, container: Any, key: Any, field: str) -> IPAddress | None:
    value = container[key]
    try:
        if not isinstance(value, str):
            raise ValueError
        return ipaddress.ip_address(value)
    except ValueError:
        ctx.error(line_at(container, key), field, f"{show(value)} is not an IP address")
        return None


def read_url(ctx: Ctx, container: Any, key: Any, field: str) -> str | None:
    """An http:// or https:// URL with a host (and a valid port, if any)."""
    value = read_str(ctx, container, key, field)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
        ctx.error(line_at(container, key), field, f"{value!r} is not an http:// or https:// URL")
        return None
    return value


def read_list(ctx: Ctx, container: Any, key: Any, field: str) -> LineList | None:
    """The value as a list; a single scalar is accepted as a list of one."""
    value = container[key]
    if isinstance(value, LineList):
        return value
    if isinstance(value, dict):
        ctx.error(line_at(container, key), field, "expected a list, got a mapping")
        return None
    items = LineList(value if isinstance(value, list) else [value])  # a list of a document without lines
    items.line = line_at(container, key)
    items.item_lines = [items.line] * len(items)
    return items


def read_domain_name(ctx: Ctx, container: Any, key: Any, field: str, origin: str) -> str | None:
    """`container[key]` as a domain name (`name`)."""
    return domain_name(ctx, origin, container[key], line_at(container, key), field)


def domain_name(ctx: Ctx, origin: str, value: Any, at: int, field: str) -> str | None:
    """An owner or target name: relative to the origin unless it ends with a dot; `@` is the origin."""
    if not isinstance(value, str) or not value:
        ctx.error(at, field, f"{show(value)} is not a domain name")
        return None
    text = value.strip().lower()
    if text == "@":
        return origin
    absolute = text[:-1] if text.endswith(".") else f"{text}.{origin}" if origin else text
    labels = absolute.split(".")
    if len(absolute) > 253 or any(not _LABEL.match(label) for label in labels) or "*" in labels[1:]:
        ctx.error(at, field, f"{value!r} is not a valid domain name")
        return None
    return absolute
