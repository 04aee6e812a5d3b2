"""The octoDNS provider with the real `octodns` package: `octodns-sync --doit` into a running
node, `dig` from London and California subnets, a second sync that plans nothing, and
`octodns-dump` from geodns round-tripping the zone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest.importorskip("octodns")

from octodns.provider.yaml import YamlProvider  # noqa: E402
from octodns.zone import Zone as OctoZone  # noqa: E402

from tests.control.conftest import TOKEN, Node, running_node  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ZONE = "octo.example.test."

SOURCE = """\
---
'':
  - type: TXT
    values: ['v=spf1 -all', 'k=v\\; with a semicolon']
  - type: MX
    values:
      - {exchange: mail.octo.example.test., preference: 10}
  - type: CAA
    value: {flags: 0, tag: issue, value: letsencrypt.org}
mail:
  type: A
  ttl: 300
  value: 192.0.2.25
app:
  type: CNAME
  value: www.octo.example.test.
_sip._tcp:
  type: SRV
  value: {priority: 10, weight: 60, port: 5060, target: app.octo.example.test.}
legacy:
  type: NS
  values: [ns1.legacy.example.net., ns2.legacy.example.net.]
www:
  type: A
  ttl: 60
  values: [192.0.2.200]
  dynamic:
    pools:
      europe:
        fallback: north-america
        values:
          - {value: 192.0.2.101, weight: 3}
          - {value: 192.0.2.111, weight: 1}
      north-america:
        values:
          - {value: 192.0.2.102}
      partner:
        fallback: europe
        values:
          - {value: 192.0.2.150}
    rules:
      - subnets: [198.51.100.0/24]
        pool: partner
      - geos: [EU, AF]
        pool: europe
      - pool: north-america
"""


def octodns_config(tmp: Path, node: Node, source_dir: Path) -> Path:
    config = tmp / "octodns.yaml"
    config.write_text(yaml.safe_dump({
        "providers": {
            "config": {"class": "octodns.provider.yaml.YamlProvider", "directory": str(source_dir),
                       "enforce_order": False},
            "geodns": {"class": "geodns.octodns.GeodnsProvider", "url": f"http://{node.admin}",
                       "token": "env/GEODNS_ADMIN_TOKEN", "nameservers": ["ns1.octo.example.test.", "ns2.octo.example.test."]},
        },
        "zones": {ZONE: {"sources": ["config"], "targets": ["geodns"]}},
    }))
    return config


def run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEODNS_ADMIN_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    bindir = Path(sys.executable).parent
    tool = bindir / argv[0] if (bindir / argv[0]).exists() else argv[0]
    out = subprocess.run([str(tool), *argv[1:]], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def dig(node: Node, name: str, subnet: str, rtype: str = "A") -> list[str]:
    out = subprocess.run(["dig", f"@{node.host}", "-p", str(node.dns_port), name, rtype, f"+subnet={subnet}",
                          "+short", "+time=2", "+tries=1"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    return sorted(out.stdout.split())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    with running_node(tmp_path, 30) as n:
        yield n


def octo_records(directory: Path) -> dict[tuple[str, str], dict]:
    zone = OctoZone(ZONE, [])
    YamlProvider("read", str(directory), enforce_order=False).populate(zone)
    return {(r.name, r._type): {k: v for k, v in r.data.items() if k != "octodns"} for r in zone.records}


@pytest.mark.slow
def test_sync_dig_resync_and_dump(node: Node, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / f"{ZONE}yaml").write_text(SOURCE)
    config = octodns_config(tmp_path, node, source)

    run("octodns-sync", "--config-file", str(config), "--doit")
    assert (node.zones / "octo.example.test.yaml").exists()
    # London: the europe pool, one value per answer by weight 3:1; California: north-america;
    # a pinned subnet: partner.
    london = Counter(a for _ in range(8) for a in dig(node, "www.octo.example.test", "81.2.69.0/24"))
    assert london == {"192.0.2.101": 6, "192.0.2.111": 2}
    assert dig(node, "www.octo.example.test", "8.8.8.0/24") == ["192.0.2.102"]
    assert dig(node, "www.octo.example.test", "198.51.100.0/24") == ["192.0.2.150"]
    assert dig(node, "mail.octo.example.test", "8.8.8.0/24") == ["192.0.2.25"]
    assert dig(node, "octo.example.test", "8.8.8.0/24", "MX") == ["10", "mail.octo.example.test."]
    assert dig(node, "_sip._tcp.octo.example.test", "8.8.8.0/24", "SRV") == ["10", "5060", "60", "app.octo.example.test."]

    # A second sync with no change plans nothing.
    again = run("octodns-sync", "--config-file", str(config))
    assert "No changes were planned" in again.stdout + again.stderr, again.stdout + again.stderr

    # octodns-dump from geodns round-trips the zone.
    dumped = tmp_path / "dumped"
    run("octodns-dump", "--config-file", str(config), "--output-dir", str(dumped), ZONE, "geodns")
    assert octo_records(dumped) == octo_records(source)

    # A change: north-america moves; the sync applies just that.
    (source / f"{ZONE}yaml").write_text(SOURCE.replace("192.0.2.102", "192.0.2.122"))
    changed = run("octodns-sync", "--config-file", str(config), "--doit")
    assert "Update" in changed.stdout + changed.stderr
    assert dig(node, "www.octo.example.test", "8.8.8.0/24") == ["192.0.2.122"]


def test_steered_names_octodns_cannot_say_are_kept_through_a_round_trip() -> None:
    """The bundled example's geo_proximity, latency, weighted and failover names have no octoDNS
    form: they are read with their geodns definition and written back unchanged."""
    from octodns.record import Record

    from geodns.octodns import records_from_doc, zone_doc

    doc = yaml.safe_load((ROOT / "zones" / "example.yaml").read_text())
    zone = OctoZone("gslb.example.test.", [])
    for name, _type, data in records_from_doc(doc):
        zone.add_record(Record.new(zone, name, data), lenient=True)
    www = next(r for r in zone.records if r.name == "www" and r._type == "A")
    assert www.octodns["geodns"]["record"]["steer"] == doc["records"]["www"]["steer"]
    back = zone_doc("gslb.example.test", list(zone.records), doc, [], None)
    assert back["soa"]["serial"] == doc["soa"]["serial"] + 1
    assert back["regions"] == doc["regions"] and back["latency_table"] == doc["latency_table"]
    for name in ("www", "geo", "fast", "wrr", "failover", "multi"):
        assert {k: v for k, v in back["records"][name].items() if k != "ttl"} == \
            {k: v for k, v in doc["records"][name].items() if k != "ttl"}, name
    # and the result is a zone geodns takes
    from geodns.config import load_zone_text

    text = yaml.safe_dump({k: v for k, v in back.items() if k != "latency_table"})
    assert load_zone_text(text, "zone.yaml").nodes["www.gslb.example.test"].steered is not None
