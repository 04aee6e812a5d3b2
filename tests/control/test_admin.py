"""The admin API against a real node: auth, bad input, drains moving real DNS answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.control.conftest import TOKEN, Node, a_records

LONDON = "81.2.69.160"  # eu-west in the bundled GeoIP data
WWW = "www.gslb.example.test"


def http(node: Node, method: str, path: str, body: Any = None, token: str | None = None, raw: bytes | None = None) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if method == "POST" and data is None:
        data = b""
    request = urllib.request.Request(f"http://{node.admin}{path}", data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            status, text, headers = response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, text, headers = exc.code, exc.read().decode(), dict(exc.headers)
    try:
        return status, json.loads(text), headers
    except ValueError:
        return status, text, headers


def test_status_is_open_on_loopback_and_describes_regions(node: Node) -> None:
    status, doc, _ = http(node, "GET", "/v1/status")
    assert status == 200
    assert doc["generation"] == node.controller.generation
    assert doc["zones"][0]["zone"] == "gslb.example.test"
    eu = doc["regions"]["eu-west"]
    assert (eu["latitude"], eu["longitude"]) == (53.3, -6.3)
    assert eu["up"] is True and eu["drained"] is None
    assert {e["address"] for e in eu["endpoints"]} == {"192.0.2.30", "2001:db8::30"}
    assert doc["geoip"]["type"] and doc["geoip"]["age_seconds"] >= 0


def test_writes_need_the_token(node: Node) -> None:
    before = node.controller.generation
    for token in (None, "wrong"):
        for path, body in (("/v1/drain", {"target": "eu-west"}), ("/v1/undrain", {"target": "eu-west"}), ("/v1/reload", None)):
            status, doc, _ = http(node, "POST", path, body, token=token)
            assert status == 401, (path, token, doc)
            assert "bearer token" in doc["error"]
    assert node.controller.generation == before
    assert not node.state.exists()


def test_writes_are_refused_without_a_configured_token(tokenless_node: Node) -> None:
    status, doc, _ = http(tokenless_node, "POST", "/v1/drain", {"target": "eu-west"}, token="anything")
    assert status == 403
    assert "--admin-token" in doc["error"]
    # reads still work
    assert http(tokenless_node, "GET", "/v1/status")[0] == 200


def test_bad_input_is_a_clear_400_and_changes_nothing(node: Node) -> None:
    before = node.controller.generation
    cases = [
        (b"{not json", "must be JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "target is required"),
        (json.dumps({"target": ""}).encode(), "target is required"),
        (json.dumps({"target": 7}).encode(), "target is required"),
        (json.dumps({"target": "mars-north"}).encode(), "unknown target"),
        (json.dumps({"target": "eu-west/192.0.2.99"}).encode(), "unknown target"),
        (json.dumps({"target": "eu-west", "reason": 5}).encode(), "reason must be"),
        (json.dumps({"target": "eu-west", "reason": "x" * 501}).encode(), "reason must be"),
    ]
    for raw, expected in cases:
        status, doc, headers = http(node, "POST", "/v1/drain", raw=raw, token=TOKEN)
        assert status == 400, (raw, doc)
        assert expected in doc["error"], (raw, doc)
        assert headers["Content-Type"].startswith("application/json")
    status, doc, _ = http(node, "POST", "/v1/drain", raw=b"x" * 20000, token=TOKEN)
    assert status == 413
    assert node.controller.generation == before
    assert not node.state.exists()
    assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]


def test_drain_moves_answers_to_the_next_region_and_undrain_brings_them_back(node: Node) -> None:
    assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]
    status, doc, _ = http(node, "POST", "/v1/drain", {"target": "eu-west", "reason": "maintenance  window"}, token=TOKEN)
    assert status == 200, doc
    assert doc["drained"] is True and doc["changed"] is True
    assert doc["drains"] == {"eu-west": "maintenance window"}
    moved = a_records(node.query(WWW, LONDON))
    assert moved and moved != ["192.0.2.30"]
    assert moved == ["192.0.2.10"]  # the next nearest: us-east
    # persisted, in the controller's admin state format
    assert json.loads(node.state.read_text()) == {"drains": {"eu-west": "maintenance window"}}
    status, doc, _ = http(node, "GET", "/v1/status")
    eu = doc["regions"]["eu-west"]
    assert eu["up"] is False and eu["drained"] == "maintenance window"
    assert "maintenance window" in eu["cause"]
    change = doc["changes"][0]
    assert (change["region"], change["up"]) == ("eu-west", False)
    # the explain endpoint says why
    status, why, _ = http(node, "GET", f"/v1/explain?name={WWW}&client={LONDON}")
    assert status == 200 and why["answer"][0].endswith("192.0.2.10")
    assert "eu-west" in json.dumps(why["steps"])

    status, doc, _ = http(node, "POST", "/v1/undrain", {"target": "eu-west"}, token=TOKEN)
    assert status == 200 and doc["drains"] == {}
    assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]
    status, doc, _ = http(node, "GET", "/v1/status")
    assert doc["regions"]["eu-west"]["up"] is True
    assert [(c["region"], c["up"]) for c in doc["changes"][:2]] == [("eu-west", True), ("eu-west", False)]
    # undrain again: no change, still fine
    status, doc, _ = http(node, "POST", "/v1/undrain", {"target": "eu-west"}, token=TOKEN)
    assert status == 200 and doc["changed"] is False


def test_drain_one_endpoint(node: Node) -> None:
    status, doc, _ = http(node, "POST", "/v1/drain", {"target": "eu-west/192.0.2.30", "reason": "disk"}, token=TOKEN)
    assert status == 200, doc
    # eu-west has one IPv4 endpoint and min_healthy 1 of 2: the region stays up
    status, doc, _ = http(node, "GET", "/v1/status")
    eps = {e["target"]: e for e in doc["regions"]["eu-west"]["endpoints"]}
    assert eps["eu-west/192.0.2.30"]["drained"] is True and eps["eu-west/192.0.2.30"]["up"] is False


def test_drains_without_a_state_file_are_refused(tmp_path) -> None:
    from tests.control.conftest import start_node

    n = start_node(tmp_path, 12, with_state=False)
    try:
        status, doc, _ = http(n, "POST", "/v1/drain", {"target": "eu-west"}, token=TOKEN)
        assert status == 409 and "--state" in doc["error"]
    finally:
        for stop in n._stop:
            stop()


def test_explain_bad_input(node: Node) -> None:
    assert http(node, "GET", "/v1/explain?name=www.gslb.example.test")[0] == 400
    status, doc, _ = http(node, "GET", f"/v1/explain?name={WWW}&client=not-an-ip")
    assert status == 400 and "not-an-ip" in doc["error"]
    status, doc, _ = http(node, "GET", f"/v1/explain?name={WWW}&client={LONDON}&type=BOGUS")
    assert status == 400 and "BOGUS" in doc["error"]
    status, doc, _ = http(node, "GET", f"/v1/explain?name={WWW}&client={LONDON}&type=AAAA")
    assert status == 200 and doc["answer"][0].endswith("2001:db8::30")


def test_reload_good_and_bad(node: Node) -> None:
    before = node.controller.generation
    status, doc, _ = http(node, "POST", "/v1/reload", token=TOKEN)
    assert status == 200 and doc["generation"] == before + 1
    zone = node.zones / "example.yaml"
    good = zone.read_text()
    zone.write_text(good.replace("coordinates: [53.3, -6.3]", "coordinates: [153.3, -6.3]"))
    status, doc, _ = http(node, "POST", "/v1/reload", token=TOKEN)
    assert status == 422, doc
    assert "still serving" in doc["error"]
    assert any("example.yaml:" in e for e in doc["errors"]), doc["errors"]
    assert doc["generation"] == before + 1
    assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]
    status, doc, _ = http(node, "GET", "/v1/status")
    assert doc["reload"]["failures"] == 1 and doc["reload"]["last_error"]
    zone.write_text(good)
    assert http(node, "POST", "/v1/reload", token=TOKEN)[0] == 200


def test_status_page_and_assets(node: Node) -> None:
    status, html, headers = http(node, "GET", "/")
    assert status == 200 and "<html" in html
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "https://db-ip.com" in html and "IP Geolocation by DB-IP" in html
    for asset in ("app.js", "style.css", "world.svg"):
        status, body, _ = http(node, "GET", f"/static/{asset}")
        assert status == 200 and body, asset
    assert "http" not in "".join(
        line for line in html.splitlines() if "src=" in line or "href=" in line and "db-ip.com" not in line
    ), "the page must load nothing from elsewhere"
    assert http(node, "GET", "/static/..%2Fadmin.py")[0] == 404
    assert http(node, "GET", "/static/nope.js")[0] == 404


def _samples(node: Node) -> dict[tuple[str, tuple], float]:
    status, text, headers = http(node, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_parse_and_move(node: Node) -> None:
    before = _samples(node)
    key = ("geodns_queries_total", (("rcode", "NOERROR"), ("transport", "udp"), ("type", "A"), ("zone", "gslb.example.test")))
    eu = ("geodns_answers_total", (("region", "eu-west"), ("step", "geo_proximity"), ("zone", "gslb.example.test")))
    for _ in range(7):
        assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]
    node.query("nope.example.org", LONDON)
    after = _samples(node)
    assert after[key] - before.get(key, 0) == 7
    assert after[eu] - before.get(eu, 0) == 7, [k for k in after if k[0] == "geodns_answers_total"]
    refused = ("geodns_queries_total", (("rcode", "REFUSED"), ("transport", "udp"), ("type", "A"), ("zone", "none")))
    assert after[refused] - before.get(refused, 0) == 1
    hits = ("geodns_cache_hits_total", ())
    assert after[hits] >= before.get(hits, 0) + 5
    assert after[("geodns_config_generation", ())] == node.controller.generation
    assert after[("geodns_reload_failures_total", ())] == 0
    assert after[("geodns_region_up", (("region", "eu-west"), ("zone", "gslb.example.test")))] == 1
    ages = [v for (name, _), v in after.items() if name == "geodns_geoip_database_age_seconds"]
    assert ages and ages[0] > 0
    assert ("geodns_answer_latency_seconds_count", ()) in after
    # a drain shows in region_up and, on a failed reload, reload failures count
    http(node, "POST", "/v1/drain", {"target": "eu-west", "reason": "test"}, token=TOKEN)
    (node.zones / "bad.yaml").write_text("zone: [\n")
    assert http(node, "POST", "/v1/reload", token=TOKEN)[0] == 422
    later = _samples(node)
    assert later[("geodns_region_up", (("region", "eu-west"), ("zone", "gslb.example.test")))] == 0
    assert later[("geodns_target_forced_down", (("target", "eu-west"),))] == 1
    assert later[("geodns_reload_failures_total", ())] == 1


def test_failopen_answers_are_counted(node: Node) -> None:
    """Every region drained: the name still answers (fail-open), and the one fail-open
    counter, geodns_failopen_answers_total, says so."""
    key = ("geodns_failopen_answers_total", (("zone", "gslb.example.test"),))
    before = _samples(node)
    assert a_records(node.query(WWW, LONDON)) == ["192.0.2.30"]
    assert _samples(node).get(key, 0) == before.get(key, 0)
    for region in ("us-east", "us-west", "eu-west", "ap-southeast", "sa-east"):
        assert http(node, "POST", "/v1/drain", {"target": region, "reason": "test"}, token=TOKEN)[0] == 200
    for _ in range(3):
        assert a_records(node.query(WWW, LONDON))  # never an empty answer
    assert _samples(node)[key] - before.get(key, 0) == 3


def test_answer_shares_come_from_counter_deltas(node: Node) -> None:
    from geodns.control.admin import STATE

    # the app's state lives in the app; reach it through the running loop
    node.call(lambda: None)
    apps = [s for s in node.controller.subscribers if getattr(s, "__self__", None) is not None]
    state = apps[0].__self__
    assert state is not None and STATE is not None
    node.call(state.sample)
    for _ in range(6):
        node.query(WWW, LONDON)
    for _ in range(2):
        node.query(WWW, "8.8.8.8")
    time.sleep(0.01)
    node.call(state.sample)
    shares = node.call(state.shares)
    assert shares["answers"] == 8
    assert shares["regions"]["eu-west"] == 0.75
    status, doc, _ = http(node, "GET", "/v1/status")
    assert doc["regions"]["eu-west"]["share"] == 0.75


def test_openapi_documents_every_route(node: Node) -> None:
    import yaml
    from aiohttp import web

    from geodns.control.admin import make_admin_app

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
    assert spec["openapi"].startswith("3.")
    app: web.Application = make_admin_app(node.controller, TOKEN)
    routes = {
        (r.method.lower(), r.resource.canonical.replace("{name}", "{name}"))
        for r in app.router.routes()
        if r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented
    for path in ("/v1/drain", "/v1/undrain", "/v1/reload"):
        assert spec["paths"][path]["post"]["security"] == [{"bearer": []}]
