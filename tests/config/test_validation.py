"""Every validation rule reports `file:line: field: message`, all errors at once."""

from __future__ import annotations

import pytest

from .helpers import HEAD, errors, line_of, zone_text


def one_error(text: str) -> str:
    found = errors(text)
    assert len(found) == 1, found
    return found[0]


# --- unknown keys at every level ---------------------------------------------------------


def test_unknown_top_level_key():
    text = HEAD + "tll: 30\n"
    err = one_error(text)
    assert err.startswith(f"z.yaml:{line_of(text, 'tll')}: tll: unknown key (expected one of: ")


def test_unknown_soa_key():
    text = HEAD.replace("  serial: 1\n", "  serial: 1\n  refesh: 10\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'refesh')}: soa.refesh: unknown key")


def test_unknown_nameserver_key():
    text = HEAD.replace("    glue: [192.0.2.53]\n", "    glue: [192.0.2.53]\n    ttl: 5\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'ttl: 5')}: nameservers[0].ttl: unknown key")


def test_unknown_region_key():
    text = HEAD.replace("    endpoints: [192.0.2.10]\n", "    endpoints: [192.0.2.10]\n    biass: 100\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'biass')}: regions.us-east.biass: unknown key")


def test_unknown_endpoint_key():
    text = HEAD.replace(
        "    endpoints: [192.0.2.10]\n",
        "    endpoints:\n      - address: 192.0.2.10\n        wieght: 2\n",
    )
    assert one_error(text).startswith(
        f"z.yaml:{line_of(text, 'wieght')}: regions.us-east.endpoints[0].wieght: unknown key"
    )


def test_unknown_check_key():
    text = HEAD.replace(
        "    endpoints: [192.0.2.10]\n",
        "    endpoints: [192.0.2.10]\n    check:\n      type: http\n      pth: /health\n",
    )
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'pth')}: regions.us-east.check.pth: unknown key")


def test_unknown_record_key():
    text = zone_text("www:\n  A: [192.0.2.1]\n  TLL: 5\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'TLL')}: records.www.TLL: unknown key")


def test_unknown_step_parameter_key():
    text = zone_text("www:\n  steer:\n    - latency: {tolerance: 5}\n")
    assert one_error(text).startswith(
        f"z.yaml:{line_of(text, 'tolerance')}: records.www.steer[0].latency.tolerance: unknown key"
    )


def test_unknown_geolocation_rule_key():
    text = zone_text(
        """\
        geo:
          steer:
            - geolocation:
                rules:
                  - match: [EU]
                    region: [eu-west]
        """
    )
    found = errors(text)
    assert f"z.yaml:{line_of(text, 'region: [eu-west]')}: records.geo.steer[0].geolocation.rules[0].region: unknown key" in [
        e.split(" (expected")[0] for e in found
    ]


# --- addresses and coordinates -----------------------------------------------------------


def test_bad_endpoint_address_names_the_index_and_line():
    text = HEAD.replace(
        "    endpoints: [192.0.2.30, 2001:db8::30]\n",
        "    endpoints:\n      - 10.0.0.1\n      - 10.0.0.300\n",
    )
    assert one_error(text) == (
        f"z.yaml:{line_of(text, '10.0.0.300')}: regions.eu-west.endpoints[1]: '10.0.0.300' is not an IP address"
    )


def test_bad_endpoint_address_in_a_mapping():
    text = HEAD.replace(
        "    endpoints: [192.0.2.10]\n",
        "    endpoints:\n      - address: 192.0.2.10\n      - address: 192.0.2.x\n",
    )
    assert one_error(text) == (
        f"z.yaml:{line_of(text, '192.0.2.x')}: regions.us-east.endpoints[1].address: '192.0.2.x' is not an IP address"
    )


def test_bad_glue_address():
    text = HEAD.replace("glue: [192.0.2.53]", "glue: [192.0.2.530]")
    assert one_error(text) == f"z.yaml:{line_of(text, 'glue')}: nameservers[0].glue[0]: '192.0.2.530' is not an IP address"


def test_a_record_must_be_ipv4_and_aaaa_ipv6():
    text = zone_text("mail:\n  A: [2001:db8::1]\n  AAAA: [192.0.2.1]\n")
    found = errors(text)
    assert f"z.yaml:{line_of(text, 'A: [2001')}: records.mail.A[0]: '2001:db8::1' is not an IPv4 address" in found


@pytest.mark.parametrize(
    ("coords", "field", "message"),
    [
        ("[91, 0]", "coordinates[0]", "91 is out of range -90..90"),
        ("[0, -180.5]", "coordinates[1]", "-180.5 is out of range -180..180"),
        ("[north, 0]", "coordinates[0]", "'north' is not a number"),
        ("[1, 2, 3]", "coordinates", "expected [latitude, longitude]"),
        ("53.3", "coordinates", "expected [latitude, longitude]"),
    ],
)
def test_bad_coordinates(coords, field, message):
    text = HEAD.replace("coordinates: [53.3, -6.3]", f"coordinates: {coords}")
    assert one_error(text) == f"z.yaml:{line_of(text, 'coordinates: ' + coords)}: regions.eu-west.{field}: {message}"


def test_region_without_endpoints():
    text = HEAD.replace("    endpoints: [192.0.2.10]\n", "    endpoints: []\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'endpoints: []')}: regions.us-east.endpoints: a region needs at least one endpoint"


def test_duplicate_endpoint():
    text = HEAD.replace("endpoints: [192.0.2.10]", "endpoints: [192.0.2.10, 192.0.2.10]")
    assert one_error(text) == f"z.yaml:{line_of(text, '192.0.2.10, 192')}: regions.us-east.endpoints[1]: duplicate endpoint 192.0.2.10"


def test_min_healthy_above_endpoint_count():
    text = HEAD.replace("    endpoints: [192.0.2.10]\n", "    endpoints: [192.0.2.10]\n    min_healthy: 2\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'min_healthy')}: regions.us-east.min_healthy: 2 is more than the 1 endpoints"


# --- region references in steps, default and fallback ------------------------------------


@pytest.mark.parametrize(
    ("spec", "needle", "field"),
    [
        ("  steer: [geo_proximity]\n  default: us-central\n", "default:", "records.www.default"),
        ("  steer: [geo_proximity]\n  default: [us-east, us-central]\n", "default:", "records.www.default[1]"),
        ("  steer: [geo_proximity]\n  fallback: [us-central]\n", "fallback:", "records.www.fallback[0]"),
        ("  steer: [geo_proximity]\n  regions: [us-central]\n", "regions: [us", "records.www.regions[0]"),
        ("  steer:\n    - failover: [us-east, us-central]\n", "failover:", "records.www.steer[0].failover[1]"),
    ],
)
def test_unknown_region_reference(spec, needle, field):
    text = zone_text("www:\n" + spec)
    assert one_error(text) == (
        f"z.yaml:{line_of(text, needle)}: {field}: 'us-central' is not a region of this zone (regions: eu-west, us-east)"
    )


def test_unknown_region_in_weighted_step():
    text = zone_text("www:\n  steer:\n    - weighted:\n        eu-west: 1\n        us-central: 2\n")
    assert one_error(text) == (
        f"z.yaml:{line_of(text, 'us-central')}: records.www.steer[0].weighted.us-central: 'us-central' is not a region of this zone"
    )


def test_unknown_region_in_geolocation_rule_and_default():
    text = zone_text(
        """\
        geo:
          steer:
            - geolocation:
                rules:
                  - match: [EU]
                    regions: [eu-central]
        """
    )
    assert one_error(text).startswith(
        f"z.yaml:{line_of(text, 'eu-central')}: records.geo.steer[0].geolocation.rules[0].regions[0]: 'eu-central' is not a region"
    )
    text = zone_text(
        """\
        geo:
          steer:
            - geolocation:
                rules:
                  - match: [EU]
                    regions: [eu-west]
                default: mars
        """
    )
    assert one_error(text).startswith(
        f"z.yaml:{line_of(text, 'mars')}: records.geo.steer[0].geolocation.default: 'mars' is not a region"
    )


def test_steered_name_in_a_zone_without_regions():
    head = HEAD.split("regions:")[0]
    text = zone_text("www:\n  steer: [geo_proximity]\n", head=head)
    assert one_error(text) == f"z.yaml:{line_of(text, 'steer')}: records.www.steer: a steered name needs the zone to define regions"


# --- steps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "needle", "field", "message"),
    [
        ("[nearest]", "steer", "records.www.steer[0]", "unknown step 'nearest' (steps: healthy, geo_proximity"),
        ("[limit]", "steer", "records.www.steer[0]", "limit needs a number: {limit: N}"),
        ("[{limit: 0}]", "steer", "records.www.steer[0].limit", "0 is out of range 1..64"),
        ("[{limit: two}]", "steer", "records.www.steer[0].limit", "'two' is not an integer"),
        ("[{healthy: 1}]", "steer", "records.www.steer[0].healthy", "takes no parameters"),
        ("[failover]", "steer", "records.www.steer[0]", "failover needs its priority order"),
        ("[{capacity: {threshold: 1.5}}]", "steer", "records.www.steer[0].capacity.threshold", "1.5 is out of range 0.0..1.0"),
        ("[{latency: {tolerance_ms: -1}}]", "steer", "records.www.steer[0].latency.tolerance_ms", "-1 is out of range 0..100000"),
        ("[{weighted: [eu-west]}]", "steer", "records.www.steer[0].weighted", "expected a mapping of region to weight"),
        ("[{weighted: {eu-west: -1}}]", "steer", "records.www.steer[0].weighted.eu-west", "-1 is out of range 0..65535"),
        ("[{limit: 1, healthy: null}]", "steer", "records.www.steer[0]", "a step is a name or a mapping of one name"),
        ("[]", "steer", "records.www.steer", "the chain is empty"),
    ],
)
def test_bad_steps(steps, needle, field, message):
    text = zone_text(f"www:\n  steer: {steps}\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, needle)}: {field}: {message}")


def test_step_error_points_at_the_step_line():
    text = zone_text("www:\n  steer:\n    - healthy\n    - geo_proximty\n")
    assert one_error(text).startswith(f"z.yaml:{line_of(text, 'geo_proximty')}: records.www.steer[1]: unknown step")


@pytest.mark.parametrize("match", ["EUR", "US-CALIFORNIA", "10.0.0.0/33", "10.0.0.1/8", "NA-US-CA-X"])
def test_bad_geolocation_match(match):
    text = zone_text(
        f"""\
        geo:
          steer:
            - geolocation:
                rules:
                  - match: [EU, "{match}"]
                    regions: [eu-west]
        """
    )
    assert one_error(text).startswith(
        f"z.yaml:{line_of(text, 'match:')}: records.geo.steer[0].geolocation.rules[0].match[1]: '{match}' is not a continent (EU)"
    )


def test_geolocation_needs_rules():
    text = zone_text("geo:\n  steer:\n    - geolocation: {default: eu-west}\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'geolocation')}: records.geo.steer[0].geolocation.rules: is required"


def test_steering_keys_without_steer():
    text = zone_text("www:\n  A: [192.0.2.1]\n  default: eu-west\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'default')}: records.www.default: only meaningful with 'steer'"


def test_steered_name_cannot_have_plain_a():
    text = zone_text("www:\n  steer: [geo_proximity]\n  A: [192.0.2.1]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'A: [')}: records.www.A: a steered name gets its A/AAAA from its regions"


# --- rules across names ------------------------------------------------------------------


def test_cname_beside_other_data():
    text = zone_text("app:\n  CNAME: www\n  TXT: [hello]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'app:')}: records.app: a CNAME cannot stand beside other records"


def test_cname_beside_a_steered_name():
    text = zone_text("app:\n  CNAME: www\n  steer: [geo_proximity]\n")
    found = errors(text)
    assert any(e.startswith(f"z.yaml:{line_of(text, 'CNAME')}: records.app.CNAME:") for e in found), found


def test_cname_with_two_targets():
    text = zone_text("app:\n  CNAME: [a, b]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'CNAME')}: records.app.CNAME: a CNAME has exactly one target"


def test_apex_cname_and_apex_ns():
    text = zone_text('"@":\n  CNAME: www\n')
    assert one_error(text) == f"z.yaml:{line_of(text, '@')}: records.@: the apex cannot be a CNAME"
    text = zone_text('"@":\n  NS: [ns9]\n')
    assert one_error(text) == f"z.yaml:{line_of(text, '@')}: records.@.NS: apex NS records come from 'nameservers'"


def test_records_below_a_delegation():
    text = zone_text("legacy:\n  NS: [ns.other.net.]\nhost.legacy:\n  A: [192.0.2.1]\n")
    assert one_error(text) == (
        f"z.yaml:{line_of(text, 'host.legacy')}: records.host.legacy: is below the delegation 'legacy.example.test'"
    )


def test_delegation_point_holds_only_ns_and_glue():
    text = zone_text("legacy:\n  NS: [ns.legacy]\n  TXT: [x]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'legacy:')}: records.legacy: a delegation point holds only NS (and glue)"


def test_duplicate_yaml_key_is_reported_with_its_line():
    text = zone_text("www:\n  A: [192.0.2.1]\nwww:\n  A: [192.0.2.2]\n")
    assert one_error(text) == (
        f"z.yaml:{line_of(text, 'www:', 2)}: duplicate key 'www' (first at line {line_of(text, 'www:')})"
    )


def test_same_name_spelled_two_ways():
    text = zone_text("www:\n  A: [192.0.2.1]\nwww.example.test.:\n  A: [192.0.2.2]\n")
    assert one_error(text) == (
        f"z.yaml:{line_of(text, 'www.example.test.')}: records.www.example.test.: 'www.example.test' is defined twice"
    )


def test_name_outside_the_zone():
    text = zone_text("www.example.org.:\n  A: [192.0.2.1]\n")
    assert one_error(text) == (
        f"z.yaml:{line_of(text, 'example.org')}: records.www.example.org.: 'www.example.org' is outside the zone 'example.test'"
    )


@pytest.mark.parametrize("owner", ["a..b", "-a", "a*", "x.*.b", "a b"])
def test_invalid_owner_names(owner):
    text = zone_text(f'"{owner}":\n  A: [192.0.2.1]\n')
    assert one_error(text) == f"z.yaml:{line_of(text, owner)}: records.{owner}: '{owner}' is not a valid domain name"


def test_duplicate_value_in_an_rrset():
    text = zone_text("mail:\n  A: [192.0.2.1, 192.0.2.1]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'mail:') + 1}: records.mail.A[1]: duplicate value"


def test_node_without_records():
    text = zone_text("empty:\n  ttl: 10\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'empty:')}: records.empty: has no records"


# --- YAML syntax, required keys, several errors ------------------------------------------


def test_yaml_syntax_error_has_its_line():
    text = zone_text("www:\n  A: [192.0.2.1\nmail:\n  A: [192.0.2.2]\n")
    err = one_error(text)
    assert err.startswith("z.yaml:")
    line = int(err.split(":")[1])
    assert line_of(text, "A: [192.0.2.1") <= line <= line_of(text, "mail:")
    assert "YAML syntax" in err


def test_tab_indentation_is_a_syntax_error_with_line():
    text = HEAD + "records:\n\twww: {A: [192.0.2.1]}\n"
    err = one_error(text)
    assert err.startswith(f"z.yaml:{line_of(text, 'www')}: YAML syntax")


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


@pytest.mark.parametrize("key", ["mname", "rname", "serial"])
def test_missing_required_soa_fields(key):
    text = "".join(line for line in HEAD.splitlines(keepends=True) if not line.startswith(f"  {key}:"))
    assert one_error(text) == f"z.yaml:{line_of(text, 'soa:')}: soa.{key}: is required"


def test_mx_mapping_missing_a_field_is_an_error_not_a_crash():
    text = zone_text('"@":\n  MX:\n    - {preference: 10}\n')
    assert one_error(text) == f"z.yaml:{line_of(text, 'preference')}: records.@.MX[0].exchange: is required"


def test_missing_coordinates_and_endpoints():
    text = HEAD.replace("    coordinates: [38.9, -77.0]\n    endpoints: [192.0.2.10]\n", "    bias: 10\n")
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


def test_ttl_out_of_range():
    text = zone_text("www:\n  ttl: -5\n  A: [192.0.2.1]\n")
    assert one_error(text) == f"z.yaml:{line_of(text, 'ttl: -5')}: records.www.ttl: -5 is out of range 0..2147483647"


def test_check_needs_a_known_type_and_timeout_within_interval():
    text = HEAD.replace(
        "    endpoints: [192.0.2.10]\n",
        "    endpoints: [192.0.2.10]\n    check: {type: ftp}\n",
    )
    assert one_error(text) == f"z.yaml:{line_of(text, 'ftp')}: regions.us-east.check.type: 'ftp' is not one of http, https, tcp, dns, exec"
    text = HEAD.replace(
        "    endpoints: [192.0.2.10]\n",
        "    endpoints: [192.0.2.10]\n    check:\n      type: tcp\n      interval: 1\n      timeout: 2\n",
    )
    assert one_error(text) == f"z.yaml:{line_of(text, 'timeout')}: regions.us-east.check.timeout: must not exceed the interval"
