"""`geodns webhook` (a real process) in front of a real node, spoken to with ExternalDNS's own
request and response bodies (tests/control/data/externaldns): the negotiation, records, a create
with two regions, an update, a delete; the served answers follow."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from geodns.control import webhook
from tests.control.conftest import TOKEN, Node, a_records, free_port, http_request, running_node

DATA = Path(__file__).with_name("data") / "externaldns"
EXAMPLES = json.loads((DATA / "openapi-examples.json").read_text())
MEDIA = EXAMPLES["mediaType"]
ROOT = Path(__file__).resolve().parents[2]
LONDON, CALIFORNIA = "81.2.69.160", "8.8.8.8"
ZONE = "gslb.example.test"


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[tuple[Node, str]]:
    with running_node(tmp_path, 40) as node:
        yield from _webhook_for(node, tmp_path)


def _webhook_for(node: Node, tmp_path: Path) -> Iterator[tuple[Node, str]]:
    port = free_port("127.0.0.1")
    env = {**os.environ, "GEODNS_ADMIN_TOKEN": TOKEN,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "geodns", "webhook", "--listen", f"127.0.0.1:{port}", "--admin", node.admin],
                            env=env, stdout=(tmp_path / "webhook.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield node, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def call(base: str, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Accept": MEDIA, **({"Content-Type": MEDIA} if data is not None else {})}
    return http_request(base + path, method, data, headers, timeout=15)


def ep(name: str, targets: list[str], set_id: str = "", rtype: str = "A", **props: str) -> dict[str, Any]:
    """An endpoint shaped like the OpenAPI example, moved into the test zone."""
    e = dict(EXAMPLES["endpoint"], dnsName=f"{name}.{ZONE}", recordType=rtype, targets=targets)
    if set_id:
        e["setIdentifier"] = set_id
    if props:
        e["providerSpecific"] = [{"name": f"webhook/{k}", "value": v} for k, v in props.items()]
    return e


def test_a_webhook_conversation_changes_the_answers(hook) -> None:
    node, base = hook
    # Negotiation: exactly what ExternalDNS's client checks.
    status, body, headers = call(base, "GET", "/")
    assert status == 200 and headers["Content-Type"] == MEDIA and headers["Vary"] == "Content-Type"
    assert body["include"] == [ZONE] and body["filters"] == [ZONE]
    assert set(body) >= set(EXAMPLES["negotiateResponse"])
    status, body, _ = call(base, "GET", "/healthz")
    assert status == 200

    status, records, headers = call(base, "GET", "/records")
    assert status == 200 and headers["Content-Type"] == MEDIA
    assert {"dnsName": f"mail.{ZONE}", "targets": ["192.0.2.25"], "recordType": "A"} in records
    assert not any(r["dnsName"] == f"www.{ZONE}" for r in records)  # the hand-written steered names stay the zone file's

    # A create with two regions (and the registry TXT records ExternalDNS writes beside them).
    eu = ep("app2", ["192.0.2.130"], "eu", **{"geodns-region": "eu-west", "geodns-weight": "2"})
    us = ep("app2", ["192.0.2.120"], "us", **{"geodns-region": "us-west"})
    owner = '"heritage=external-dns,external-dns/owner=default,external-dns/resource=ingress/default/app2"'
    txt_eu = ep("a-app2", [owner], "eu", rtype="TXT")
    txt_us = ep("a-app2", [owner], "us", rtype="TXT")
    plain = dict(EXAMPLES["endpoint"], dnsName=f"foo.{ZONE}", targets=EXAMPLES["targets"])
    desired = [eu, us, txt_eu, txt_us, plain]
    status, adjusted, headers = call(base, "POST", "/adjustendpoints", desired)
    assert status == 200 and headers["Content-Type"] == MEDIA
    eu_adjusted = adjusted[0]
    assert {p["name"]: p["value"] for p in eu_adjusted["providerSpecific"]} == {
        "webhook/geodns-region": "eu-west", "webhook/geodns-weight": "2", "webhook/geodns-policy": "geo_proximity"}
    status, body, _ = call(base, "POST", "/records", {"create": desired})
    assert status == 204, body
    assert a_records(node.query(f"app2.{ZONE}", LONDON)) == ["192.0.2.130"]
    assert a_records(node.query(f"app2.{ZONE}", CALIFORNIA)) == ["192.0.2.120"]
    assert a_records(node.query(f"foo.{ZONE}", LONDON)) == sorted(EXAMPLES["targets"])
    # GET /records gives back what AdjustEndpoints said: ExternalDNS plans nothing more.
    status, records, _ = call(base, "GET", "/records")
    for e in adjusted:
        assert e in records, e
    assert node.query(f"a-app2.{ZONE}", LONDON, "TXT").answer

    # An update: eu moves to another address.
    eu_new = dict(eu, targets=["192.0.2.131"])
    status, body, _ = call(base, "POST", "/records", {"updateOld": [eu], "updateNew": [eu_new]})
    assert status == 204, body
    assert a_records(node.query(f"app2.{ZONE}", LONDON)) == ["192.0.2.131"]
    assert a_records(node.query(f"app2.{ZONE}", CALIFORNIA)) == ["192.0.2.120"]

    # A delete, with the key spelling of ExternalDNS's own mixed-case test (Go decodes keys
    # case-insensitively): us goes, California now gets eu.
    mixed = json.loads((DATA / "changes-mixed-case.json").read_text())
    assert "Delete" in mixed and "Create" in mixed
    status, body, _ = call(base, "POST", "/records", {"Delete": [us, txt_us]})
    assert status == 204, body
    assert a_records(node.query(f"app2.{ZONE}", CALIFORNIA)) == ["192.0.2.131"]
    status, body, _ = call(base, "POST", "/records", {"Delete": [eu_new, txt_eu, plain]})
    assert status == 204, body
    assert node.query(f"app2.{ZONE}", LONDON).rcode() == 3  # NXDOMAIN
    assert not any(r["dnsName"] in (f"app2.{ZONE}", f"foo.{ZONE}") for r in call(base, "GET", "/records")[1])


def test_bad_changes_are_refused_and_change_nothing(hook) -> None:
    node, base = hook
    before = (node.zones / "example.yaml").read_bytes()
    mixed = (DATA / "changes-mixed-case.json").read_bytes()  # names outside every zone
    cases = [
        mixed,
        b"not json",
        b"[1, 2]",
        json.dumps({"create": [ep("x", ["192.0.2.1"], "eu", **{"geodns-region": "eu-west", "geodns-weight": "heavy"})]}).encode(),
        json.dumps({"create": [ep("x", ["192.0.2.1"], "eu", **{"geodns-region": "mars"})]}).encode(),
        json.dumps({"create": [ep("x", ["192.0.2.1"], "eu", **{"geodns-region": "eu-west", "geodns-policy": "random"})]}).encode(),
        json.dumps({"create": [ep("x", ["not-an-address"])]}).encode(),
        json.dumps({"create": [ep("www", ["192.0.2.1"])]}).encode(),  # a hand-written steered name
        json.dumps({"create": [dict(EXAMPLES["endpoint"], recordType="HINFO", dnsName=f"x.{ZONE}")]}).encode(),
    ]
    for raw in cases:
        status, body, _ = call(base, "POST", "/records", raw=raw)
        assert status == 400, (raw[:80], status, body)
    assert (node.zones / "example.yaml").read_bytes() == before
    assert sorted(p.name for p in node.zones.glob("*.yaml")) == ["example.yaml"]


def test_endpoints_round_trip_through_a_zone() -> None:
    """Pure: what apply_changes writes, endpoints_of reads back as AdjustEndpoints said."""
    doc = {"zone": "z.test", "soa": {"mname": "ns1", "rname": "h", "serial": 1}, "nameservers": ["ns1"],
           "regions": {"eu-west": {"coordinates": [53.3, -6.3], "endpoints": ["192.0.2.1"], "check": {"type": "tcp", "port": 443}}}}
    raw = [
        {"dnsName": "w.z.test", "recordType": "A", "setIdentifier": "a", "targets": ["192.0.2.10"],
         "providerSpecific": [{"name": "webhook/geodns-region", "value": "eu-west"}, {"name": "webhook/geodns-policy", "value": "failover"},
                              {"name": "webhook/geodns-weight", "value": "5"}]},
        {"dnsName": "w.z.test", "recordType": "AAAA", "setIdentifier": "a", "targets": ["2001:db8::10"],
         "providerSpecific": [{"name": "webhook/geodns-region", "value": "eu-west"}, {"name": "webhook/geodns-policy", "value": "failover"},
                              {"name": "webhook/geodns-weight", "value": "5"}]},
        {"dnsName": "w.z.test", "recordType": "A", "setIdentifier": "b", "targets": ["192.0.2.20"],
         "providerSpecific": [{"name": "geodns-coordinates", "value": "40.0,-75.0"}, {"name": "geodns-policy", "value": "failover"}]},
        {"dnsName": "m.z.test", "recordType": "MX", "targets": ["10 mail.z.test"]},
        {"dnsName": "s.z.test", "recordType": "SRV", "targets": ["10 60 5060 sip.z.test"], "recordTTL": 120},
        {"dnsName": "c.z.test", "recordType": "CNAME", "targets": ["w.z.test"]},
        {"dnsName": "z.test", "recordType": "TXT", "targets": ["v=spf1 -all"]},
    ]
    endpoints = [webhook.endpoint(e) for e in raw]
    out = webhook.apply_changes(doc, {"create": endpoints, "updateold": [], "updatenew": [], "delete": []})
    spec = out["records"]["w"]
    assert spec["steer"] == [{"failover": ["w.eu-west.a", "w.b.b"]}]
    assert out["regions"]["w.eu-west.a"]["check"] == {"type": "tcp", "port": 443}
    assert out["regions"]["w.eu-west.a"]["endpoints"] == ["192.0.2.10", "2001:db8::10"]
    import yaml

    from geodns.config import load_zone_text

    load_zone_text(yaml.safe_dump(out), "z.yaml")  # geodns takes it
    back = [webhook.wire(e) for e in webhook.endpoints_of(out)]
    for e in endpoints:
        assert webhook.wire(webhook.adjust(e)) in back, webhook.wire(webhook.adjust(e))


def test_kubernetes_sidecar_manifest() -> None:
    from collections import defaultdict

    from geodns.cli import build_parser

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "external-dns-webhook.yaml").read_text()))
    by_kind = defaultdict(list)
    for d in docs:
        by_kind[d["kind"]].append(d)
    (deployment,) = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    edns, hook = containers["external-dns"], containers["geodns-webhook"]
    assert "--provider=webhook" in edns["args"]
    url = next(a.split("=", 1)[1] for a in edns["args"] if a.startswith("--webhook-provider-url="))
    args = build_parser().parse_args(hook["args"][1:])
    assert args.func is webhook.run and url == f"http://{args.listen}" and args.listen.startswith("127.0.0.1:")
    assert hook["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {e["name"] for e in hook["env"]} == {"GEODNS_ADMIN", "GEODNS_ADMIN_TOKEN"}
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"][0]["metadata"]["name"]
    assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in containers.values())
