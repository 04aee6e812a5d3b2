"""JSON in from outside (peer messages, admin API bodies, the admin state file): strict.

Python's `json.loads` accepts `NaN`, `Infinity` and `-Infinity`, which are not
JSON (RFC 8259 section 6) and, as timestamps, poison every comparison they
reach. Every JSON entry point of the health and drain code goes through
`loads`, which refuses them. (The node's own saved files, drains.json and
state.json, are parsed permissively and checked entry by entry, so that one
NaN drops one entry, not the file: `geodns.health.drains.read_json_file`.) Finite numbers too large for a float (`1e400`)
parse as infinity, so they are refused the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["loads"]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads` that raises ValueError on NaN, Infinity and out-of-range numbers."""
    return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
