"""docs/zone.schema.json says what the loader reads: the same keys at every level, the same
bounds, every zone shipped in the repository valid under both, and zones the loader
refuses for their shape refused by the schema too."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from geodns.config import load_zone_file, load_zone_text
from geodns.config.checks import (
    CHECK_FIELDS,
    CHECK_KEYS,
    POOL_CHECK_KEYS,
    POOL_KEYS,
    PROBE_KINDS,
    STATUS_FIELDS,
)
from geodns.config.fields import read_float, read_int
from geodns.config.records import PLAIN_TYPES
from geodns.config.steering import (
    GEOLOCATION_KEYS,
    RULE_KEYS,
    STEERED_KEYS,
    STEP_KINDS,
    STEP_NUMBERS,
)
from geodns.config.zone import (
    DNSSEC_KEYS,
    ENDPOINT_KEYS,
    NAMESERVER_KEYS,
    REGION_KEYS,
    SOA_FIELDS,
    ZONE_KEYS,
)

from .helpers import HEAD, REPO, errors, zone_text

SCHEMA = json.loads((REPO / "docs" / "zone.schema.json").read_text())
DEFS = SCHEMA["definitions"]
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
US_EAST = "    endpoints: [192.0.2.10]\n"


def schema_errors(text: str) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(yaml.safe_load(text))]


def test_the_schema_is_a_draft_7_schema():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def shipped_zones() -> list:
    """Every zone in the repository outside tests/: files with a top-level `zone:`, and the
    zones the Kubernetes manifests carry in ConfigMaps."""
    found = []
    for path in sorted(REPO.glob("**/*.yaml")):
        if {"tests", ".git", "node_modules"} & set(path.relative_to(REPO).parts):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "zone" in doc and "soa" in doc:
                found.append(pytest.param(path, None, id=str(path.relative_to(REPO))))
            elif isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if isinstance(yaml.safe_load(text), dict) and "zone" in yaml.safe_load(text):
                        found.append(pytest.param(path, text, id=f"{path.relative_to(REPO)}:{key}"))
    return found


def test_there_are_shipped_zones_to_check():
    ids = {p.id for p in shipped_zones()}
    assert {"zones/example.yaml", "deploy/compose/zones/gslb.yaml", "deploy/kubernetes/geodns.yaml:gslb.yaml"} <= ids, ids


@pytest.mark.parametrize(("path", "text"), shipped_zones())
def test_every_shipped_zone_is_valid_under_the_loader_and_the_schema(path, text):
    if text is None:
        load_zone_file(path)
        text = path.read_text()
    else:
        load_zone_text(text, str(path))
    assert schema_errors(text) == []


def props(schema: dict) -> set[str]:
    return set(schema["properties"])


def branches(schema: dict) -> list[dict]:
    """The schemas of an if/then/else chain, in order."""
    out = []
    while "if" in schema:
        out.append(schema["then"])
        schema = schema["else"]
    return [*out, schema]


def test_every_key_the_loader_reads_is_in_the_schema_and_no_other():
    top = SCHEMA["properties"]
    assert props(SCHEMA) == set(ZONE_KEYS)
    assert props(top["soa"]) == set(SOA_FIELDS) and set(top["soa"]["required"]) == {"mname", "rname", "serial"}
    assert props(top["dnssec"]) == set(DNSSEC_KEYS)
    nameserver = top["nameservers"]["anyOf"][1]["items"]["anyOf"][1]
    assert props(nameserver) == set(NAMESERVER_KEYS)
    region = DEFS["region"]
    assert props(region) == set(REGION_KEYS) and set(region["required"]) == {"coordinates", "endpoints"}
    endpoint = region["properties"]["endpoints"]["anyOf"][1]["items"]["anyOf"][1]
    assert props(endpoint) == set(ENDPOINT_KEYS)
    assert props(DEFS["check"]) == set(CHECK_KEYS)
    assert DEFS["check"]["properties"]["type"]["enum"] == list(PROBE_KINDS)
    *status, probe = branches(DEFS["balancer"])
    assert probe == {"$ref": "#/definitions/check"}
    assert {s["properties"]["type"]["const"] for s in status} == set(POOL_KEYS)
    for s in status:
        own, required = POOL_KEYS[s["properties"]["type"]["const"]]
        assert props(s) == {*POOL_CHECK_KEYS, *own} and set(s["required"]) == {"type", *required}
    assert props(DEFS["record"]) == {*PLAIN_TYPES, *STEERED_KEYS}
    steps = DEFS["step"]["anyOf"]
    kinds = set(steps[0]["enum"]) | {key for s in steps[1:] for key in s["properties"]}
    assert kinds == set(STEP_KINDS)
    by_kind = {next(iter(s["properties"])): s["properties"] for s in steps[1:]}
    for kind, (key, _default, lo, hi) in STEP_NUMBERS.items():
        params = by_kind[kind][kind]["anyOf"][1]
        assert props(params) == {key} and (params["properties"][key]["minimum"], params["properties"][key]["maximum"]) == (lo, hi)
    geolocation = by_kind["geolocation"]["geolocation"]
    assert props(geolocation) == set(GEOLOCATION_KEYS)
    assert props(geolocation["properties"]["rules"]["items"]) == set(RULE_KEYS)


def test_every_bound_of_a_check_is_the_loaders():
    haproxy = branches(DEFS["balancer"])[0]
    for fields, schema in ((CHECK_FIELDS, DEFS["check"]), (STATUS_FIELDS, haproxy)):
        for key, reader, bounds, _attr in fields:
            if reader in (read_int, read_float) and key in schema["properties"]:
                prop = schema["properties"][key]
                assert (prop["minimum"], prop["maximum"]) == bounds, key
                assert prop["type"] == ("integer" if reader is read_int else "number"), key


def head(old: str, new: str) -> str:
    assert old in HEAD, old
    return HEAD.replace(old, new)


def us_east(keys: str) -> str:
    return head(US_EAST, US_EAST + keys)


VALID = [
    pytest.param(head("nameservers:\n  - name: ns1\n    glue: [192.0.2.53]\n", "nameservers: ns.other.net.\n"), id="nameserver-as-one-name"),
    pytest.param(head(US_EAST, "    endpoints: 192.0.2.10\n"), id="one-endpoint-as-a-scalar"),
    pytest.param(head(US_EAST, "    endpoints:\n      - {address: 192.0.2.10, weight: 0, check: {type: tcp, port: 22}}\n"),
                 id="endpoint-mapping"),
    pytest.param(us_east("    check: {type: exec, command: /bin/true, interval: 10, timeout: 10}\n"), id="exec-check"),
    pytest.param(us_east("    check: {type: dns, qname: www.example.com., expect: 200}\n"), id="dns-check"),
    pytest.param(us_east("    balancer: {type: envoy, url: 'https://10.0.1.10:9901/clusters?format=json', cluster: www}\n"),
                 id="envoy-balancer"),
    pytest.param(us_east("    balancer: {type: http, host: 10.0.1.10, port: 9080, path: /v1/load}\n    capacity_url: http://x/v1/load\n"),
                 id="probe-balancer"),
    pytest.param(zone_text('"@":\n  MX: [{preference: 10, exchange: mail}]\n  TXT: [42, text]\n'
                           '  CAA: [{flags: 0, tag: issue, value: ca.example}]\n'
                           '"_sip._tcp":\n  SRV: [{priority: 1, weight: 2, port: 5060, target: sip.example.net.}]\n'), id="rdata-mappings"),
    pytest.param(zone_text("www:\n  steer: geo_proximity\n  regions: eu-west\n"), id="one-step-and-one-region-as-scalars"),
    pytest.param(zone_text("www:\n  steer: [{healthy: null}, {weighted: {eu-west: 2}}, capacity, {latency: {tolerance_ms: 5}}, "
                           "{failover: us-east}, {limit: 2}]\n  fallback: [us-east]\n  failover_ttl: 5\n"), id="every-step"),
    pytest.param(zone_text("geo:\n  steer:\n    - geolocation:\n        rules:\n          - {match: [eu, NA-US-CA, us-or, 10.0.0.0/8, "
                           "'2001:db8::/32'], regions: eu-west}\n        default: us-east\n"), id="geolocation-matches"),
    pytest.param(head("zone: example.test\n", "zone: example.test\nttl: 60\nns_ttl: 300\nrecords:\n"), id="empty-records"),
]


@pytest.mark.parametrize("text", VALID)
def test_zones_the_loader_takes_the_schema_takes(text):
    load_zone_text(text, "z.yaml")
    assert schema_errors(text) == []


REFUSED = [
    pytest.param(HEAD + "tll: 30\n", id="unknown-top-level-key"),
    pytest.param("".join(line for line in HEAD.splitlines(keepends=True) if "serial" not in line), id="soa-without-serial"),
    pytest.param(head("glue: [192.0.2.53]", "glue: [192.0.2.530]"), id="glue-not-an-address"),
    pytest.param(head("coordinates: [53.3, -6.3]", "coordinates: [91, 0]"), id="latitude-out-of-range"),
    pytest.param(head(US_EAST, "    endpoints: []\n"), id="no-endpoints"),
    pytest.param(us_east("    biass: 100\n"), id="unknown-region-key"),
    pytest.param(us_east("    check: {type: ftp}\n"), id="check-type"),
    pytest.param(us_east("    check: {type: exec}\n"), id="exec-without-command"),
    pytest.param(us_east("    check: {type: http, interval: 0.01}\n"), id="check-interval"),
    pytest.param(us_east("    check: {type: haproxy, url: http://10.0.1.10/, backend: www}\n"), id="status-type-under-check"),
    pytest.param(us_east("    balancer: {type: haproxy, url: http://10.0.1.10/stats}\n"), id="haproxy-without-backend"),
    pytest.param(us_east("    balancer: {type: nginx, url: 'ftp://10.0.1.10/', capacity: 10}\n"), id="balancer-url-scheme"),
    pytest.param(zone_text("www:\n  A: [192.0.2.1]\n  TLL: 5\n"), id="unknown-record-key"),
    pytest.param(zone_text("mail:\n  A: [2001:db8::1]\n"), id="a-not-ipv4"),
    pytest.param(zone_text("mail:\n  A: [192.0.2.1, 192.0.2.1]\n"), id="duplicate-value"),
    pytest.param(zone_text("app:\n  CNAME: [a, b]\n"), id="cname-with-two-targets"),
    pytest.param(zone_text('"@":\n  MX: ["mail"]\n'), id="mx-one-field"),
    pytest.param(zone_text('"@":\n  CAA: [{flags: 256, tag: issue, value: x}]\n'), id="caa-flags"),
    pytest.param(zone_text('"_sip._tcp":\n  SRV: {priority: 1, weight: 2, port: 5060, target: sip}\n'), id="one-srv-mapping-not-in-a-list"),
    pytest.param(head(US_EAST, "    endpoints: {address: 192.0.2.10}\n"), id="one-endpoint-mapping-not-in-a-list"),
    pytest.param(zone_text("empty:\n  ttl: 10\n"), id="no-records"),
    pytest.param(zone_text('"a..b":\n  A: [192.0.2.1]\n'), id="bad-owner-name"),
    pytest.param(zone_text("www:\n  A: [192.0.2.1]\n  default: eu-west\n"), id="steering-key-without-steer"),
    pytest.param(zone_text("www:\n  steer: [geo_proximity]\n  A: [192.0.2.1]\n"), id="steered-name-with-a"),
    pytest.param(zone_text("www:\n  steer: [nearest]\n"), id="unknown-step"),
    pytest.param(zone_text("www:\n  steer: [limit]\n"), id="limit-without-a-number"),
    pytest.param(zone_text("www:\n  steer: [{limit: 0}]\n"), id="limit-zero"),
    pytest.param(zone_text("www:\n  steer: [{weighted: {eu-west: -1}}]\n"), id="negative-weight"),
    pytest.param(zone_text("www:\n  steer: [{capacity: {threshold: 1.5}}]\n"), id="capacity-threshold"),
    pytest.param(zone_text("www:\n  steer: []\n"), id="empty-chain"),
    pytest.param(zone_text("geo:\n  steer:\n    - geolocation: {default: eu-west}\n"), id="geolocation-without-rules"),
    pytest.param(zone_text("geo:\n  steer:\n    - geolocation: {rules: [{match: [EUR], regions: [eu-west]}]}\n"), id="geolocation-match"),
    pytest.param(HEAD + "dnssec: {key: keys}\n", id="dnssec-key"),
]


@pytest.mark.parametrize("text", REFUSED)
def test_zones_the_loader_refuses_for_their_shape_the_schema_refuses(text):
    assert errors(text)
    assert schema_errors(text)
