"""Endpoint weights and a region's `answers`, as a resolver sees them from a real node:
shares by weight, standbys only when every weighted endpoint is out, drains moving them."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from tests.control.conftest import TOKEN, Node, a_records, http_request, running_node

ZONE = """\
zone: weights.test
ttl: 30
soa: {mname: ns1, rname: hostmaster, serial: 1}
nameservers: [{name: ns1, glue: [127.0.0.53]}]
regions:
  dc:
    coordinates: [50.1, 8.7]
    answers: 1
    endpoints:
      - {address: 192.0.2.1, weight: 3}
      - {address: 192.0.2.2, weight: 1}
      - {address: 192.0.2.9, weight: 0}
      - {address: 192.0.2.8, weight: 0}
  pair:
    coordinates: [50.1, 8.7]
    answers: 2
    endpoints:
      - {address: 198.51.100.1, weight: 2}
      - {address: 198.51.100.2, weight: 1}
      - {address: 198.51.100.3, weight: 1}
  all:
    coordinates: [50.1, 8.7]
    endpoints:
      - 203.0.113.1
      - {address: 203.0.113.2, weight: 5}
      - {address: 203.0.113.9, weight: 0}
records:
  one: {steer: [healthy], regions: [dc]}
  two: {steer: [healthy], regions: [pair]}
  every: {steer: [healthy], regions: [all]}
"""


@pytest.fixture
def node(tmp_path: Path):
    zones = tmp_path / "zones"
    zones.mkdir()
    (zones / "weights.yaml").write_text(ZONE)
    with running_node(tmp_path, 41) as n:
        yield n


def tally(node: Node, name: str, count: int) -> collections.Counter:
    seen: collections.Counter = collections.Counter()
    for _ in range(count):
        seen[tuple(a_records(node.query(name)))] += 1
    return seen


def drain(node: Node, target: str, on: bool = True) -> None:
    path = "/v1/drain" if on else "/v1/undrain"
    status, _, _ = http_request(f"http://{node.admin}{path}", "POST", json.dumps({"target": target, "reason": "test"}).encode(),
                                {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert status == 200


def test_one_answer_per_query_by_weight_and_the_standby_only_when_the_rest_are_out(node: Node) -> None:
    assert tally(node, "one.weights.test", 400) == {("192.0.2.1",): 300, ("192.0.2.2",): 100}
    drain(node, "dc/192.0.2.1")
    assert tally(node, "one.weights.test", 20) == {("192.0.2.2",): 20}
    drain(node, "dc/192.0.2.2")
    assert tally(node, "one.weights.test", 20) == {("192.0.2.9",): 10, ("192.0.2.8",): 10}, \
        "the standbys, alike, once every weighted one is out"
    drain(node, "dc/192.0.2.1", on=False)
    assert tally(node, "one.weights.test", 20) == {("192.0.2.1",): 20}


def test_two_of_three_each_in_its_share_of_answers(node: Node) -> None:
    seen = tally(node, "two.weights.test", 400)
    assert all(len(addresses) == 2 for addresses in seen)
    included = collections.Counter(a for addresses, n in seen.items() for a in addresses for _ in range(n))
    # 2 answers x 2/4, 1/4, 1/4: the heaviest is in every answer, the others in half each
    assert included == {"198.51.100.1": 400, "198.51.100.2": 200, "198.51.100.3": 200}


def test_without_answers_every_weighted_endpoint_is_answered_and_standbys_wait(node: Node) -> None:
    assert tally(node, "every.weights.test", 5) == {("203.0.113.1", "203.0.113.2"): 5}
    drain(node, "all/203.0.113.1")
    drain(node, "all/203.0.113.2")
    assert tally(node, "every.weights.test", 5) == {("203.0.113.9",): 5}


def test_explain_names_the_pick_and_standbys_left_alone_share_alike(tmp_path: Path) -> None:
    """`geodns query`'s reasoning shows the `answers` step; a region of standbys only (every
    weight 0) shares them alike instead of failing to divide by a zero total."""
    import time

    from geodns.control.controller import Controller
    from geodns.dns.explain import explain

    zone = ZONE.replace("      - {address: 192.0.2.1, weight: 3}\n      - {address: 192.0.2.2, weight: 1}\n", "")
    (tmp_path / "z.yaml").write_text(zone)
    controller = Controller(str(tmp_path), str(Path(__file__).resolve().parents[2] / "data" / "geoip-bundle.mmdb"))
    snap = controller.start()
    text = explain(snap, "one.weights.test", "A", "81.2.69.160", time.time()).text()
    assert "dc: 1 of 2 standby addresses (no weighted one up) per answer, by weight (192.0.2.9 50%, 192.0.2.8 50%)" in text
    text = explain(snap, "two.weights.test", "A", "81.2.69.160", time.time()).text()
    assert "pair: 2 of 3 addresses per answer, by weight (198.51.100.1 100%, 198.51.100.2 50%, 198.51.100.3 50%)" in text
