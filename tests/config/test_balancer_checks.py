"""`balancer:` checks that read HAProxy, nginx or Envoy: accepted as documented (the ways they are
refused, with file:line, are rows of test_validation's table)."""

from __future__ import annotations

from .helpers import HEAD, load, zone_text


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
