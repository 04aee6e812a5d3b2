"""`balancer:` checks that read HAProxy, nginx or Envoy: accepted as documented, refused with file:line."""

from __future__ import annotations

import pytest

from .helpers import HEAD, errors, line_of, load, zone_text


def with_balancer(spec: str, key: str = "balancer") -> str:
    head = HEAD.replace("    endpoints: [192.0.2.10]\n", f"    endpoints: [192.0.2.10]\n    {key}: {spec}\n")
    return zone_text("www: {steer: [healthy, capacity]}\n", head=head)


def test_the_three_balancer_types_load():
    zone = load(with_balancer('{type: haproxy, url: "http://10.0.1.10:8404/stats;csv", backend: www, min_up: 2, interval: 2}'))
    check = zone.regions["us-east"].balancer
    assert (check.kind, check.url, check.pool, check.min_up, check.capacity, check.interval) == (
        "haproxy", "http://10.0.1.10:8404/stats;csv", "www", 2, None, 2.0)
    check = load(with_balancer("{type: nginx, url: http://10.0.1.10/stub_status, capacity: 10000}")).regions["us-east"].balancer
    assert (check.kind, check.pool, check.capacity, check.min_up) == ("nginx", None, 10000, 1)
    check = load(with_balancer('{type: envoy, url: "https://10.0.1.10:9901/clusters?format=json", cluster: www, verify_tls: false}')).regions["us-east"].balancer
    assert (check.kind, check.pool, check.verify_tls) == ("envoy", "www", False)


@pytest.mark.parametrize("spec, field, message", [
    ("{type: haproxy, url: http://10.0.1.10/stats}", "backend", "is required"),
    ("{type: haproxy, backend: www}", "url", "is required"),
    ("{type: nginx, url: http://10.0.1.10/stub_status}", "capacity", "is required"),
    ("{type: envoy, url: http://10.0.1.10:9901/clusters}", "cluster", "is required"),
    ("{type: haproxy, url: 'ftp://10.0.1.10/stats', backend: www}", "url", "'ftp://10.0.1.10/stats' is not an http:// or https:// URL"),
    ("{type: haproxy, url: 'http://10.0.1.10:99999/', backend: www}", "url", "is not an http:// or https:// URL"),
    ("{type: haproxy, url: http://10.0.1.10/, backend: www, min_up: -1}", "min_up", "-1 is out of range 0..100000"),
    ("{type: nginx, url: http://10.0.1.10/, capacity: 0}", "capacity", "0 is out of range"),
    ("{type: nginx, url: http://10.0.1.10/, capacity: 10, min_up: 2}", "min_up", "unknown key"),
    ("{type: envoy, url: http://10.0.1.10/, cluster: www, backend: www}", "backend", "unknown key"),
    ("{type: haproxy, url: http://10.0.1.10/, backend: www, path: /stats}", "path", "unknown key"),
    ("{type: envoy, url: http://10.0.1.10/, cluster: [www]}", "cluster", "is not a non-empty string"),
])
def test_bad_balancer_checks_are_refused_with_file_line_and_field(spec, field, message):
    text = with_balancer(spec)
    found = errors(text)
    line = line_of(text, "balancer:")
    assert any(e.startswith(f"z.yaml:{line}: regions.us-east.balancer.{field}: ") and message in e for e in found), found


def test_status_types_belong_to_the_balancer_only():
    text = with_balancer("{type: haproxy, url: http://10.0.1.10/, backend: www}", key="check")
    found = errors(text)
    assert any("regions.us-east.check.type: 'haproxy' is not one of http, https, tcp, dns, exec" in e
               and "only under a region's balancer:" in e for e in found), found
