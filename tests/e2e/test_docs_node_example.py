"""docs/health.md's node settings example, as an operator copies it, starts a node.

Only what cannot be right on a test machine is changed: the key file (made
with `geodns keygen`'s writer), the state directory, the peers' addresses
(unused loopback ports instead of 10.0.x hosts) and the NATS exchange and
probe source address (no NATS server or 10.0.0.53 here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dnsclient import ask, cookie_of, fqdn

from geodns.health import keys
from tests.e2e.conftest import ROOT, copy_zones, free_port, start_geodns

pytestmark = pytest.mark.slow

HOST = "127.0.5.61"


def docs_example() -> str:
    text = (ROOT / "docs" / "health.md").read_text()
    section = text[text.index("## Node settings (`--node FILE`)"):]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_the_documented_node_settings_start_a_node(tmp_path: Path) -> None:
    text = docs_example()
    keys.write_private_key(str(tmp_path / "ams1.key"), keys.generate())
    text = text.replace("/var/lib/geodns", str(tmp_path / "state"))
    text = re.sub(r"http://10\.0\.\d+\.\d+:8053", lambda _: f"http://127.0.5.62:{free_port('127.0.5.62')}", text)
    text = re.sub(r"(?m)^exchange:.*\n(  .*\n)*", "", text)
    text = re.sub(r"(?m)^(source_address|listen):.*\n", "", text)
    (tmp_path / "node.yaml").write_text(text)
    node = start_geodns(tmp_path, HOST, free_port(HOST), copy_zones(tmp_path), extra=["--node", str(tmp_path / "node.yaml")])
    try:
        reply = ask((HOST, node.port), fqdn("www"), "A", cookie=b"\x01" * 8)
        cookie = cookie_of(reply)
        assert cookie is not None and len(cookie) == 8 + 16 and reply.answer
        log = node.proc.output()
        assert "rrl=rate=50/s" in log and "cookie secret: random" not in log, log
    finally:
        node.proc.stop()
