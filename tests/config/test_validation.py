"""Every validation rule reports `file:line: field: message`, all errors at once.

Most rules are one row of a table: a case id, the zone text, the text of the line the
error is on (its line number is found there), and the error after `z.yaml:LINE: `.
An error ending in `…` is a prefix of the error; otherwise it is the whole of it.
"""

from __future__ import annotations

import pytest

from .helpers import HEAD, errors, line_of, zone_text

US_EAST = "    endpoints: [192.0.2.10]\n"


def head(old: str, new: str) -> str:
    """HEAD with one piece replaced."""
    assert old in HEAD, old
    return HEAD.replace(old, new)


def us_east(keys: str) -> str:
    """HEAD with `keys` added to the region us-east."""
    return head(US_EAST, US_EAST + keys)


def endpoints(region_line: str, items: str) -> str:
    """HEAD with a region's endpoints line replaced by a block list."""
    return head(region_line, "    endpoints:\n" + items)


def geolocation(body: str) -> str:
    """A steered name `geo` whose only step is a geolocation with `body` (dedented, under it)."""
    indented = "".join(f"        {line}\n" for line in body.splitlines())
    return zone_text("geo:\n  steer:\n    - geolocation:\n" + indented)


def one(case_id: str, text: str, needle: str | tuple[str, int], error: str):
    """A case refused with exactly one error, on the (first, or n-th) line containing needle."""
    return pytest.param(text, needle, error, id=case_id)


REFUSED = [
    # --- unknown keys at every level
    one("unknown-top-level-key", HEAD + "tll: 30\n", "tll", "tll: unknown key (expected one of: …"),
    one("unknown-soa-key", head("  serial: 1\n", "  serial: 1\n  refesh: 10\n"), "refesh", "soa.refesh: unknown key…"),
    one("unknown-nameserver-key", head("    glue: [192.0.2.53]\n", "    glue: [192.0.2.53]\n    ttl: 5\n"), "ttl: 5",
        "nameservers[0].ttl: unknown key…"),
    one("unknown-region-key", us_east("    biass: 100\n"), "biass", "regions.us-east.biass: unknown key…"),
    one("unknown-endpoint-key", endpoints(US_EAST, "      - address: 192.0.2.10\n        wieght: 2\n"), "wieght",
        "regions.us-east.endpoints[0].wieght: unknown key…"),
    one("unknown-check-key", us_east("    check:\n      type: http\n      pth: /health\n"), "pth",
        "regions.us-east.check.pth: unknown key…"),
    one("unknown-record-key", zone_text("www:\n  A: [192.0.2.1]\n  TLL: 5\n"), "TLL", "records.www.TLL: unknown key…"),
    one("unknown-step-parameter-key", zone_text("www:\n  steer:\n    - latency: {tolerance: 5}\n"), "tolerance",
        "records.www.steer[0].latency.tolerance: unknown key…"),
    # --- addresses and coordinates
    one("endpoint-address-index", endpoints("    endpoints: [192.0.2.30, 2001:db8::30]\n", "      - 10.0.0.1\n      - 10.0.0.300\n"),
        "10.0.0.300", "regions.eu-west.endpoints[1]: '10.0.0.300' is not an IP address"),
    one("endpoint-address-in-a-mapping", endpoints(US_EAST, "      - address: 192.0.2.10\n      - address: 192.0.2.x\n"),
        "192.0.2.x", "regions.us-east.endpoints[1].address: '192.0.2.x' is not an IP address"),
    one("glue-address", head("glue: [192.0.2.53]", "glue: [192.0.2.530]"), "glue",
        "nameservers[0].glue[0]: '192.0.2.530' is not an IP address"),
    *(
        one(f"coordinates-{coords}", head("coordinates: [53.3, -6.3]", f"coordinates: {coords}"), f"coordinates: {coords}",
            f"regions.eu-west.{error}")
        for coords, error in [
            ("[91, 0]", "coordinates[0]: 91 is out of range -90..90"),
            ("[0, -180.5]", "coordinates[1]: -180.5 is out of range -180..180"),
            ("[north, 0]", "coordinates[0]: 'north' is not a number"),
            ("[1, 2, 3]", "coordinates: expected [latitude, longitude]"),
            ("53.3", "coordinates: expected [latitude, longitude]"),
        ]
    ),
    one("region-without-endpoints", head(US_EAST, "    endpoints: []\n"), "endpoints: []",
        "regions.us-east.endpoints: a region needs at least one endpoint"),
    one("duplicate-endpoint", head("endpoints: [192.0.2.10]", "endpoints: [192.0.2.10, 192.0.2.10]"), "192.0.2.10, 192",
        "regions.us-east.endpoints[1]: duplicate endpoint 192.0.2.10"),
    one("min-healthy-above-endpoint-count", us_east("    min_healthy: 2\n"), "min_healthy",
        "regions.us-east.min_healthy: 2 is more than the 1 endpoints"),
    one("answers-zero", us_east("    answers: 0\n"), "answers",
        "regions.us-east.answers: 0 is out of range 1..64"),
    one("answers-not-a-number", us_east("    answers: all\n"), "answers",
        "regions.us-east.answers: 'all' is not an integer"),
    one("endpoint-weight-negative", endpoints(US_EAST, "      - {address: 192.0.2.10, weight: -1}\n"), "weight",
        "regions.us-east.endpoints[0].weight: -1 is out of range 0..65535"),
    # --- checks
    one("check-type", us_east("    check: {type: ftp}\n"), "ftp",
        "regions.us-east.check.type: 'ftp' is not one of http, https, tcp, dns, exec"),
    one("check-timeout-over-interval", us_east("    check:\n      type: tcp\n      interval: 1\n      timeout: 2\n"), "timeout",
        "regions.us-east.check.timeout: must not exceed the interval"),
    *(
        one(f"balancer-{case_id}", us_east(f"    balancer: {spec}\n"), "balancer:", f"regions.us-east.balancer.{error}")
        for case_id, spec, error in [
            ("haproxy-backend", "{type: haproxy, url: http://10.0.1.10/stats}", "backend: is required"),
            ("haproxy-url", "{type: haproxy, backend: www}", "url: is required"),
            ("nginx-capacity", "{type: nginx, url: http://10.0.1.10/stub_status}", "capacity: is required"),
            ("envoy-cluster", "{type: envoy, url: http://10.0.1.10:9901/clusters}", "cluster: is required"),
            ("url-scheme", "{type: haproxy, url: 'ftp://10.0.1.10/stats', backend: www}",
             "url: 'ftp://10.0.1.10/stats' is not an http:// or https:// URL"),
            ("url-port", "{type: haproxy, url: 'http://10.0.1.10:99999/', backend: www}",
             "url: 'http://10.0.1.10:99999/' is not an http:// or https:// URL"),
            ("min-up", "{type: haproxy, url: http://10.0.1.10/, backend: www, min_up: -1}", "min_up: -1 is out of range 0..100000"),
            ("capacity", "{type: nginx, url: http://10.0.1.10/, capacity: 0}", "capacity: 0 is out of range 1..1000000000"),
            ("nginx-min-up", "{type: nginx, url: http://10.0.1.10/, capacity: 10, min_up: 2}", "min_up: unknown key…"),
            ("envoy-backend", "{type: envoy, url: http://10.0.1.10/, cluster: www, backend: www}", "backend: unknown key…"),
            ("haproxy-path", "{type: haproxy, url: http://10.0.1.10/, backend: www, path: /stats}", "path: unknown key…"),
            ("envoy-cluster-list", "{type: envoy, url: http://10.0.1.10/, cluster: [www]}", "cluster: a list is not a non-empty string"),
        ]
    ),
    # --- region references in steps, default and fallback
    *(
        one(f"unknown-region-{case_id}", zone_text("www:\n" + spec), needle,
            f"{field}: 'us-central' is not a region of this zone (regions: eu-west, us-east)")
        for case_id, spec, needle, field in [
            ("default", "  steer: [geo_proximity]\n  default: us-central\n", "default:", "records.www.default"),
            ("default-list", "  steer: [geo_proximity]\n  default: [us-east, us-central]\n", "default:", "records.www.default[1]"),
            ("fallback", "  steer: [geo_proximity]\n  fallback: [us-central]\n", "fallback:", "records.www.fallback[0]"),
            ("regions", "  steer: [geo_proximity]\n  regions: [us-central]\n", "regions: [us", "records.www.regions[0]"),
            ("failover", "  steer:\n    - failover: [us-east, us-central]\n", "failover:", "records.www.steer[0].failover[1]"),
        ]
    ),
    one("unknown-region-weighted", zone_text("www:\n  steer:\n    - weighted:\n        eu-west: 1\n        us-central: 2\n"),
        "us-central", "records.www.steer[0].weighted.us-central: 'us-central' is not a region of this zone"),
    one("unknown-region-geolocation-rule", geolocation("rules:\n  - match: [EU]\n    regions: [eu-central]"), "eu-central",
        "records.geo.steer[0].geolocation.rules[0].regions[0]: 'eu-central' is not a region…"),
    one("unknown-region-geolocation-default", geolocation("rules:\n  - match: [EU]\n    regions: [eu-west]\ndefault: mars"), "mars",
        "records.geo.steer[0].geolocation.default: 'mars' is not a region…"),
    one("steered-name-without-regions", zone_text("www:\n  steer: [geo_proximity]\n", head=HEAD.split("regions:")[0]), "steer",
        "records.www.steer: a steered name needs the zone to define regions"),
    # --- steps
    *(
        one(f"step-{steps}", zone_text(f"www:\n  steer: {steps}\n"), "steer", error)
        for steps, error in [
            ("[nearest]", "records.www.steer[0]: unknown step 'nearest' (steps: healthy, geo_proximity…"),
            ("[limit]", "records.www.steer[0]: limit needs a number: {limit: N}"),
            ("[{limit: 0}]", "records.www.steer[0].limit: 0 is out of range 1..64"),
            ("[{limit: two}]", "records.www.steer[0].limit: 'two' is not an integer"),
            ("[{healthy: 1}]", "records.www.steer[0].healthy: takes no parameters"),
            ("[failover]", "records.www.steer[0]: failover needs its priority order…"),
            ("[{capacity: {threshold: 1.5}}]", "records.www.steer[0].capacity.threshold: 1.5 is out of range 0.0..1.0"),
            ("[{latency: {tolerance_ms: -1}}]", "records.www.steer[0].latency.tolerance_ms: -1 is out of range 0..100000"),
            ("[{weighted: [eu-west]}]", "records.www.steer[0].weighted: expected a mapping of region to weight"),
            ("[{weighted: {eu-west: -1}}]", "records.www.steer[0].weighted.eu-west: -1 is out of range 0..65535"),
            ("[{limit: 1, healthy: null}]", "records.www.steer[0]: a step is a name or a mapping of one name…"),
            ("[]", "records.www.steer: the chain is empty"),
        ]
    ),
    one("step-error-on-the-step-line", zone_text("www:\n  steer:\n    - healthy\n    - geo_proximty\n"), "geo_proximty",
        "records.www.steer[1]: unknown step…"),
    *(
        one(f"geolocation-match-{match}", geolocation(f'rules:\n  - match: [EU, "{match}"]\n    regions: [eu-west]'), "match:",
            f"records.geo.steer[0].geolocation.rules[0].match[1]: '{match}' is not a continent (EU)…")
        for match in ["EUR", "US-CALIFORNIA", "10.0.0.0/33", "10.0.0.1/8", "NA-US-CA-X"]
    ),
    one("geolocation-needs-rules", zone_text("geo:\n  steer:\n    - geolocation: {default: eu-west}\n"), "geolocation",
        "records.geo.steer[0].geolocation.rules: is required"),
    one("steering-keys-without-steer", zone_text("www:\n  A: [192.0.2.1]\n  default: eu-west\n"), "default",
        "records.www.default: only meaningful with 'steer'"),
    one("steered-name-with-plain-a", zone_text("www:\n  steer: [geo_proximity]\n  A: [192.0.2.1]\n"), "A: [",
        "records.www.A: a steered name gets its A/AAAA from its regions"),
    # --- records
    one("cname-beside-other-data", zone_text("app:\n  CNAME: www\n  TXT: [hello]\n"), "app:",
        "records.app: a CNAME cannot stand beside other records"),
    one("cname-with-two-targets", zone_text("app:\n  CNAME: [a, b]\n"), "CNAME", "records.app.CNAME: a CNAME has exactly one target"),
    one("apex-cname", zone_text('"@":\n  CNAME: www\n'), "@", "records.@: the apex cannot be a CNAME"),
    one("apex-ns", zone_text('"@":\n  NS: [ns9]\n'), "@", "records.@.NS: apex NS records come from 'nameservers'"),
    *(
        one(f"below-a-delegation-{case_id}", zone_text("legacy:\n  NS: [ns.legacy]\n" + below), below.split(":")[0] + ":",
            f"records.{below.split(':')[0]}: is below the delegation 'legacy.example.test'")
        for case_id, below in [
            ("not-a-name-server", "host.legacy:\n  A: [192.0.2.1]\n"),
            ("name-server-not-only-addresses", "ns.legacy:\n  A: [192.0.2.1]\n  TXT: [x]\n"),
        ]
    ),
    one("below-a-delegation-elsewhere", zone_text("legacy:\n  NS: [ns.other.net.]\nhost.legacy:\n  A: [192.0.2.1]\n"),
        "host.legacy", "records.host.legacy: is below the delegation 'legacy.example.test'"),
    one("delegation-point-holds-only-ns-and-glue", zone_text("legacy:\n  NS: [ns.legacy]\n  TXT: [x]\n"), "legacy:",
        "records.legacy: a delegation point holds only NS (and glue)"),
    one("duplicate-yaml-key", zone_text("www:\n  A: [192.0.2.1]\nwww:\n  A: [192.0.2.2]\n"), ("www:", 2),
        f"duplicate key 'www' (first at line {HEAD.count(chr(10)) + 2})"),
    one("same-name-spelled-two-ways", zone_text("www:\n  A: [192.0.2.1]\nwww.example.test.:\n  A: [192.0.2.2]\n"),
        "www.example.test.", "records.www.example.test.: 'www.example.test' is defined twice"),
    one("name-outside-the-zone", zone_text("www.example.org.:\n  A: [192.0.2.1]\n"), "example.org",
        "records.www.example.org.: 'www.example.org' is outside the zone 'example.test'"),
    *(
        one(f"invalid-owner-{owner}", zone_text(f'"{owner}":\n  A: [192.0.2.1]\n'), owner,
            f"records.{owner}: '{owner}' is not a valid domain name")
        for owner in ["a..b", "-a", "a*", "x.*.b", "a b"]
    ),
    one("duplicate-value-in-an-rrset", zone_text("mail:\n  A: [192.0.2.1, 192.0.2.1]\n"), "A: [192.0.2.1, 192.0.2.1]",
        "records.mail.A[1]: duplicate value"),
    one("node-without-records", zone_text("empty:\n  ttl: 10\n"), "empty:", "records.empty: has no records"),
    one("ttl-out-of-range", zone_text("www:\n  ttl: -5\n  A: [192.0.2.1]\n"), "ttl: -5",
        "records.www.ttl: -5 is out of range 0..2147483647"),
    one("mx-mapping-missing-a-field", zone_text('"@":\n  MX:\n    - {preference: 10}\n'), "preference",
        "records.@.MX[0].exchange: is required"),
    *(
        one(f"rdata-{error.split(':')[0]}-{i}", zone_text(f'"@":\n  {rtype}: {value}\n'), rtype + ":", f"records.@.{error}")
        for i, (rtype, value, error) in enumerate([
            ("MX", '["mail"]', "MX[0]: expected 2 fields (preference exchange), got 'mail'"),
            ("MX", '["70000 mail"]', "MX[0].preference: 70000 is out of range 0..65535"),
            ("MX", '["ten mail"]', "MX[0].preference: 'ten' is not an integer"),
            ("SRV", '["10 60 sip"]', "SRV[0]: expected 4 fields (priority weight port target), got '10 60 sip'"),
            ("SRV", "[{priority: 1, weight: 1, port: 99999, target: x}]", "SRV[0].port: 99999 is out of range 0..65535"),
            ("CAA", '["256 issue ca.example"]', "CAA[0].flags: 256 is out of range 0..255"),
            ("CAA", '["0 iss-ue ca.example"]', "CAA[0]: CAA tag 'iss-ue' must be letters and digits"),
            ("MX", "[[10, mail]]", "MX[0]: expected a mapping with preference, exchange"),
            ("TXT", "[{a: 1}]", "TXT[0]: a mapping is not text"),
            ("TXT", f'["{"x" * 65001}"]', "TXT[0]: text is too long"),
        ])
    ),
    # --- the file
    one("tab-indentation", HEAD + "records:\n\twww: {A: [192.0.2.1]}\n", "www", "YAML syntax…"),
    *(
        one(f"soa-without-{key}", "".join(line for line in HEAD.splitlines(keepends=True) if not line.startswith(f"  {key}:")),
            "soa:", f"soa.{key}: is required")
        for key in ["mname", "rname", "serial"]
    ),
]


@pytest.mark.parametrize(("text", "needle", "error"), REFUSED)
def test_refused_with_one_error(text, needle, error):
    where = line_of(text, *needle) if isinstance(needle, tuple) else line_of(text, needle)
    expected = f"z.yaml:{where}: {error}"
    found = errors(text)
    assert len(found) == 1, found
    if expected.endswith("…"):
        assert found[0].startswith(expected[:-1]), found
    else:
        assert found[0] == expected


AMONG = [
    # (case id, text, needle, the start of one of several errors)
    pytest.param(geolocation("rules:\n  - match: [EU]\n    region: [eu-west]"), "region: [eu-west]",
                 "records.geo.steer[0].geolocation.rules[0].region: unknown key (expected", id="unknown-geolocation-rule-key"),
    pytest.param(zone_text("mail:\n  A: [2001:db8::1]\n  AAAA: [192.0.2.1]\n"), "A: [2001",
                 "records.mail.A[0]: '2001:db8::1' is not an IPv4 address", id="a-must-be-ipv4-and-aaaa-ipv6"),
    pytest.param(us_east("    check: {type: haproxy, url: http://10.0.1.10/, backend: www}\n"), "check:",
                 "regions.us-east.check.type: 'haproxy' is not one of http, https, tcp, dns, exec (haproxy, nginx and envoy "
                 "read a balancer's status: only under a region's balancer:)", id="status-types-belong-to-the-balancer"),
    pytest.param(zone_text("app:\n  CNAME: www\n  steer: [geo_proximity]\n"), "CNAME", "records.app.CNAME:",
                 id="cname-beside-a-steered-name"),
]


@pytest.mark.parametrize(("text", "needle", "error"), AMONG)
def test_refused_among_other_errors(text, needle, error):
    expected = f"z.yaml:{line_of(text, needle)}: {error}"
    found = errors(text)
    assert any(e.startswith(expected) for e in found), found


# --- YAML syntax, required keys, several errors ------------------------------------------


def test_yaml_syntax_error_has_its_line():
    text = zone_text("www:\n  A: [192.0.2.1\nmail:\n  A: [192.0.2.2]\n")
    (err,) = errors(text)
    assert err.startswith("z.yaml:")
    line = int(err.split(":")[1])
    assert line_of(text, "A: [192.0.2.1") <= line <= line_of(text, "mail:")
    assert "YAML syntax" in err


@pytest.mark.parametrize(
    ("drop", "field"),
    [("zone", "zone"), ("soa", "soa"), ("nameservers", "nameservers")],
)
def test_missing_required_top_level_keys(drop, field):
    lines = HEAD.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(drop + ":"))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    text = "".join(lines[:start] + lines[end:])
    assert f"z.yaml:1: {field}: is required" in errors(text)


def test_missing_coordinates_and_endpoints():
    text = head("    coordinates: [38.9, -77.0]\n" + US_EAST, "    bias: 10\n")
    assert errors(text) == [
        f"z.yaml:{line_of(text, 'us-east:')}: regions.us-east.coordinates: is required",
        f"z.yaml:{line_of(text, 'us-east:')}: regions.us-east.endpoints: is required",
    ]


def test_several_errors_are_reported_together_in_file_order():
    text = zone_text("www:\n  steer: [geo_proximity]\n  default: us-central\nmail:\n  A: [192.0.2.300]\n")
    text = text.replace("serial: 1", "serial: -1").replace("endpoints: [192.0.2.10]", "endpoints: [192.0.2.1000]")
    found = errors(text)
    assert found == [
        f"z.yaml:{line_of(text, 'serial')}: soa.serial: -1 is out of range 0..4294967295",
        f"z.yaml:{line_of(text, '192.0.2.1000')}: regions.us-east.endpoints[0]: '192.0.2.1000' is not an IP address",
        f"z.yaml:{line_of(text, 'default: us-central')}: records.www.default: 'us-central' is not a region of this zone (regions: eu-west)",
        f"z.yaml:{line_of(text, '192.0.2.300')}: records.mail.A[0]: '192.0.2.300' is not an IP address",
    ]


def test_empty_file():
    assert errors("") == ["z.yaml:0: empty zone file"]


def test_top_level_list():
    found = errors("- zone: a\n")
    assert found[0].startswith("z.yaml:1: expected a mapping")
