"""`/v1/zones` against a real node: writes change real DNS answers, refusals change nothing."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import dns.rcode
import yaml

from geodns.control.zonestore import ZoneStore, content_hash, zone_name
from tests.control.conftest import TOKEN, Node, a_records, http_request

LONDON = "81.2.69.160"
CALIFORNIA = "8.8.8.8"  # us-west in the bundled data

NEW_ZONE = """\
# a zone made through the API
zone: api.example.test
soa: {mname: ns1, rname: hostmaster, serial: 7}
nameservers: [{name: ns1, glue: [127.0.0.53]}]
regions:
  eu: {coordinates: [51.5, -0.1], endpoints: [192.0.2.101]}
  us: {coordinates: [37.4, -122.1], endpoints: [192.0.2.102]}
records:
  www:
    steer: [healthy, geo_proximity, {limit: 1}]
  mail:
    A: [192.0.2.25]
"""


def call(node: Node, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         content_type: str | None = "application/yaml", accept: str | None = None) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None and content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    return http_request(f"http://{node.admin}{path}", method, body, headers)


def snapshot_of(zones: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(zones.iterdir())}


def test_list_and_read_zones(node: Node) -> None:
    status, doc, _ = call(node, "GET", "/v1/zones", token=None)
    assert status == 200
    [zone] = doc["zones"]
    text = (node.zones / "example.yaml").read_text()
    assert zone == {"zone": "gslb.example.test", "serial": 2026112601, "hash": content_hash(text),
                    "file": "example.yaml", "source": "file"}
    status, body, headers = call(node, "GET", "/v1/zones/gslb.example.test.", token=None)
    assert status == 200 and body == text and headers["Content-Type"].startswith("application/yaml")
    assert headers["ETag"] == f'"{zone["hash"]}"'
    status, body, _ = call(node, "GET", "/v1/zones/GSLB.example.test", token=None, accept="application/json")
    assert status == 200 and body["zone"] == "gslb.example.test" and body["soa"]["serial"] == 2026112601
    status, _, _ = call(node, "GET", "/v1/zones/nope.example.test", token=None)
    assert status == 404
    # the status document carries the hash too
    status, doc, _ = call(node, "GET", "/v1/status", token=None)
    assert doc["zones"][0]["hash"] == zone["hash"]


def test_put_creates_a_zone_that_is_served_and_json_is_the_same_zone(node: Node) -> None:
    assert node.query("www.api.example.test", LONDON).rcode() == dns.rcode.REFUSED
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", NEW_ZONE.encode())
    assert status == 201, doc
    assert doc["created"] and doc["changed"] and doc["serial"] == 7 and doc["hash"] == content_hash(NEW_ZONE)
    assert (node.zones / "api.example.test.yaml").read_text() == NEW_ZONE
    assert a_records(node.query("www.api.example.test", LONDON)) == ["192.0.2.101"]
    assert a_records(node.query("www.api.example.test", CALIFORNIA)) == ["192.0.2.102"]
    generation = node.controller.generation
    # The same zone as JSON: the same content hash, nothing written, no reload.
    as_json = json.dumps(yaml.safe_load(NEW_ZONE)).encode()
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", as_json, content_type="application/json")
    assert status == 200 and doc["changed"] is False and doc["hash"] == content_hash(NEW_ZONE)
    assert node.controller.generation == generation
    # A change through JSON: applied, stored as YAML.
    changed = yaml.safe_load(NEW_ZONE)
    changed["regions"]["eu"]["endpoints"] = ["192.0.2.111"]
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", json.dumps(changed).encode(), content_type="application/json")
    assert status == 200 and doc["changed"] and not doc["created"]
    assert a_records(node.query("www.api.example.test", LONDON)) == ["192.0.2.111"]
    assert yaml.safe_load((node.zones / "api.example.test.yaml").read_text()) == changed
    status, listing, _ = call(node, "GET", "/v1/zones", token=None)
    entry = next(z for z in listing["zones"] if z["zone"] == "api.example.test")
    assert entry["source"] == "api" and entry["hash"] == doc["hash"] and entry["updated"] > 0
    # Who wrote it survives a restart (a new store over the same directory) ...
    restarted = node.call(lambda: {z["zone"]: z for z in ZoneStore(node.controller).describe()})
    assert restarted["api.example.test"]["source"] == "api" and restarted["gslb.example.test"]["source"] == "file"
    # ... until the file is edited by hand: then it is the file's.
    path = node.zones / "api.example.test.yaml"
    path.write_text(path.read_text().replace("192.0.2.111", "192.0.2.112"))
    node.call(node.controller.reload)
    assert node.call(lambda: {z["zone"]: z for z in ZoneStore(node.controller).describe()})["api.example.test"]["source"] == "file"


def test_replacing_the_example_zone_keeps_its_file(node: Node) -> None:
    text = (node.zones / "example.yaml").read_text()
    new = text.replace("endpoints: [192.0.2.30, 2001:db8::30]", "endpoints: [192.0.2.31, 2001:db8::30]")
    status, doc, _ = call(node, "PUT", "/v1/zones/gslb.example.test", new.encode())
    assert status == 200, doc
    assert sorted(p.name for p in node.zones.glob("*.yaml")) == ["example.yaml"]
    assert a_records(node.query("www.gslb.example.test", LONDON)) == ["192.0.2.31"]


def test_writes_need_the_token_and_change_nothing(node: Node, tokenless_node: Node) -> None:
    before, generation = snapshot_of(node.zones), node.controller.generation
    for token in (None, "wrong"):
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", NEW_ZONE.encode(), token=token)
        assert status == 401, doc
        status, doc, _ = call(node, "DELETE", "/v1/zones/gslb.example.test", token=token)
        assert status == 401, doc
    status, doc, _ = call(tokenless_node, "PUT", "/v1/zones/api.example.test", NEW_ZONE.encode(), token="anything")
    assert status == 403
    assert snapshot_of(node.zones) == before and node.controller.generation == generation


def test_invalid_bodies_get_line_and_field_and_change_nothing(node: Node) -> None:
    before, generation = snapshot_of(node.zones), node.controller.generation
    broken = NEW_ZONE.replace("endpoints: [192.0.2.102]", "endpoints: [192.0.2.300]").replace("serial: 7", "serial: soon")
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", broken.encode())
    assert status == 422
    found = {(e["line"], e["field"]) for e in doc["errors"]}
    assert (3, "soa.serial") in found and (7, "regions.us.endpoints[0]") in found, doc
    assert all(e["file"] == "api.example.test.yaml" for e in doc["errors"])
    cases = [
        (b"zone: [unclosed", "application/yaml", 422),
        (b'{"zone": "api.example.test", "ttl": NaN}', "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b"\xff\xfe", "application/yaml", 400),
        (b"", "application/yaml", 400),
        (NEW_ZONE.encode(), "application/octet-stream", 415),
        (NEW_ZONE.replace("zone: api.example.test", "zone: other.example.test").encode(), "application/yaml", 422),
        # the same origin as the file-based zone: refused as a duplicate
        (NEW_ZONE.replace("zone: api.example.test", "zone: gslb.example.test").encode(), "application/yaml", 422),
    ]
    for body, kind, expected in cases:
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body, content_type=kind)
        assert status == expected, (body[:60], doc)
        assert isinstance(doc, dict) and doc["error"]
    # A body declared larger than the limit is refused before it is read.
    with socket.create_connection((node.host, node.admin_port), timeout=5) as sock:
        sock.sendall(f"PUT /v1/zones/api.example.test HTTP/1.1\r\nHost: {node.host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: application/yaml\r\nContent-Length: {4 * 1024 * 1024 + 1}\r\n\r\nzone: x\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
    # the body is another zone than the URL's
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test",
                          NEW_ZONE.replace("zone: api.example.test", "zone: other.example.test").encode())
    assert doc["errors"][0]["field"] == "zone"
    assert snapshot_of(node.zones) == before and node.controller.generation == generation
    assert node.query("www.api.example.test", LONDON).rcode() == dns.rcode.REFUSED


def test_deeply_nested_bodies_are_refused_not_a_500(node: Node) -> None:
    """PyYAML composes and dumps recursively: thousands of nested brackets were a
    RecursionError, a 500 and a traceback. They are a 422/400 that says why."""
    before, generation = snapshot_of(node.zones), node.controller.generation
    deep_yaml = "zone: api.example.test\nrecords: " + "[" * 5000 + "]" * 5000
    deep_json = '{"zone": "api.example.test", "records": ' + "[" * 900 + "]" * 900 + "}"
    for body, kind, expected in ((deep_yaml, "application/yaml", 422), (deep_json, "application/json", 400)):
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body.encode(), content_type=kind)
        assert status == expected, (kind, doc)
        assert "nested deeper than 64 levels" in json.dumps(doc), doc
    assert snapshot_of(node.zones) == before and node.controller.generation == generation
    assert node.query("www.gslb.example.test", LONDON).rcode() == dns.rcode.NOERROR


def test_an_unhashable_key_is_refused_not_a_500(node: Node) -> None:
    """`? [1]: 2` or `? !!set {a}: 2` made a list or set a dict key: a TypeError, a 500."""
    before = snapshot_of(node.zones)
    for records in ("records: {? [1]: 2}", "records: {? !!set {a}: 3}", "records:\n  ? {a: 1}\n  : 2"):
        body = NEW_ZONE.split("records:")[0] + records + "\n"
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body.encode())
        assert status == 422, (records, doc)
        assert "unhashable key" in doc["errors"][0]["message"] and doc["errors"][0]["line"] >= 8, doc
    assert snapshot_of(node.zones) == before


def test_a_nul_in_a_file_reference_is_refused_not_a_500(node: Node) -> None:
    """YAML's "\\0" puts a NUL in a path; resolving it raised ValueError (a 500)."""
    before = snapshot_of(node.zones)
    for field in ('latency_table: "latency.yaml\\0x"', 'dnssec: {keys: "keys\\0x"}'):
        body = NEW_ZONE.replace("records:", field + "\nrecords:")
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body.encode())
        assert status == 422, (field, doc)
        assert "outside the zones directory" in doc["errors"][0]["message"], doc
    assert snapshot_of(node.zones) == before


def test_file_references_may_not_leave_the_zones_directory(node: Node, tmp_path: Path) -> None:
    before, generation = snapshot_of(node.zones), node.controller.generation
    outside = tmp_path / "keys"
    outside.mkdir()
    bodies = {
        "dnssec.keys": NEW_ZONE + "dnssec: {keys: ../keys}\n",
        "dnssec.keys ": NEW_ZONE + f"dnssec: {{keys: {outside}}}\n",
        "latency_table": NEW_ZONE + "latency_table: /etc/passwd\n",
        "latency_table ": NEW_ZONE + "latency_table: ../../../../../../../etc/passwd\n",
    }
    for field, body in bodies.items():
        status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body.encode())
        assert status == 422, doc
        assert [e["field"] for e in doc["errors"]] == [field.strip()], doc
        assert "outside the zones directory" in doc["errors"][0]["message"]
        assert str(node.zones) not in json.dumps(doc)  # no path of the node leaks
    exec_check = NEW_ZONE.replace(
        "eu: {coordinates: [51.5, -0.1], endpoints: [192.0.2.101]}",
        "eu: {coordinates: [51.5, -0.1], endpoints: [192.0.2.101], check: {type: exec, command: [touch, /tmp/pwned]}}",
    )
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", exec_check.encode())
    assert status == 422 and doc["errors"][0]["field"] == "regions.eu.check.type", doc
    assert snapshot_of(node.zones) == before and node.controller.generation == generation
    # Inside the directory is fine (the loader then says what it finds there).
    status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", (NEW_ZONE + "dnssec: {keys: keys}\n").encode())
    assert status == 422 and doc["errors"][0]["field"] == "dnssec.keys"
    assert "outside" not in doc["errors"][0]["message"]


def test_zone_names_in_urls_are_checked(node: Node) -> None:
    before = snapshot_of(node.zones)
    parent = node.zones.parent
    around = sorted(p.name for p in parent.iterdir())
    for raw in ("..", "..%2F..%2Fetc", "a%2Fb", "a%00b", "a..b", "%2e%2e", "*.example.test", "-a.test", "a" * 64,
                ".", "a%5Cb", "%C3%A9.test"):
        for method, body in (("PUT", NEW_ZONE.encode()), ("GET", None), ("DELETE", None)):
            status, doc, _ = call(node, method, f"/v1/zones/{raw}", body)
            assert status in (400, 404), (raw, method, status, doc)
            if status == 404 and method != "GET":
                assert "no zone" not in str(doc) or method == "DELETE", (raw, doc)
    assert zone_name("Example.TEST.") == "example.test"
    assert snapshot_of(node.zones) == before
    assert sorted(p.name for p in parent.iterdir()) == around


def test_delete(node: Node) -> None:
    status, _, _ = call(node, "PUT", "/v1/zones/api.example.test", NEW_ZONE.encode())
    assert status == 201
    status, doc, _ = call(node, "DELETE", "/v1/zones/api.example.test")
    assert status == 200 and doc["deleted"]
    assert not (node.zones / "api.example.test.yaml").exists()
    assert node.query("www.api.example.test", LONDON).rcode() == dns.rcode.REFUSED
    status, _, _ = call(node, "DELETE", "/v1/zones/api.example.test")
    assert status == 404
    # the last zone cannot go: a node with no zones would not load
    status, doc, _ = call(node, "DELETE", "/v1/zones/gslb.example.test")
    assert status == 409, doc
    assert (node.zones / "example.yaml").exists()
    assert a_records(node.query("www.gslb.example.test", LONDON)) == ["192.0.2.30"]


def test_no_query_is_lost_while_zones_are_written(node: Node) -> None:
    answered: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                reply = node.query("www.gslb.example.test", LONDON)
                answered.append(len(a_records(reply)))
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(repr(exc))

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        for serial in range(8, 16):
            body = NEW_ZONE.replace("serial: 7", f"serial: {serial}").encode()
            status, doc, _ = call(node, "PUT", "/v1/zones/api.example.test", body)
            assert status in (200, 201), doc
    finally:
        stop.set()
        thread.join(10)
    assert not failures and answered and set(answered) == {1}


def test_geodns_status_prints_each_zone_hash(node: Node, capsys) -> None:
    from geodns.cli import build_parser

    args = build_parser().parse_args(["status", "--admin", node.admin])
    assert args.func(args) == 0
    digest = content_hash((node.zones / "example.yaml").read_text())
    assert f"zone gslb.example.test: {digest[:19]}" in capsys.readouterr().out
