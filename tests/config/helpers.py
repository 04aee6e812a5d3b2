"""Helpers for the configuration tests: a minimal valid zone to break on purpose."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from geodns.config import ConfigInvalid, Zone, load_zone_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "zones" / "example.yaml"

HEAD = """\
zone: example.test
soa:
  mname: ns1
  rname: hostmaster
  serial: 1
nameservers:
  - name: ns1
    glue: [192.0.2.53]
regions:
  eu-west:
    coordinates: [53.3, -6.3]
    endpoints: [192.0.2.30, 2001:db8::30]
  us-east:
    coordinates: [38.9, -77.0]
    endpoints: [192.0.2.10]
"""


def zone_text(records: str = "", head: str = HEAD) -> str:
    """The minimal zone with `records:` (given dedented, without the key) appended."""
    text = head
    if records:
        text += "records:\n" + textwrap.indent(textwrap.dedent(records), "  ")
    return text


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing needle."""
    found = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(found) >= occurrence, f"{needle!r} not in text"
    return found[occurrence - 1]


def load(text: str, file: str = "z.yaml") -> Zone:
    return load_zone_text(text, file)


def errors(text: str, file: str = "z.yaml") -> list[str]:
    """Every error the loader reports for text, as `file:line: field: message` strings."""
    with pytest.raises(ConfigInvalid) as info:
        load_zone_text(text, file)
    assert info.value.errors, "ConfigInvalid without errors"
    assert str(info.value) == "\n".join(str(e) for e in info.value.errors)
    return [str(e) for e in info.value.errors]
