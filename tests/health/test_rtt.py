"""The measurement model: top networks, probe schedule, smoothing, ranking with hysteresis."""

import pytest

from geodns.health import rtt
from geodns.health.rtt import Estimate, Estimates, Hysteresis, ProbeSchedule, TopNetworks


def test_top_networks_keeps_the_busiest_under_a_flood():
    top = TopNetworks(capacity=100, half_life=60.0)
    for i in range(10):
        top.add(i, i << 8 | 1, 50.0, now=0.0)  # ten busy resolvers
    for i in range(100_000):  # a flood of one query each from new networks
        top.add(1_000 + i, (1_000 + i) << 8, 1.0, now=i / 10_000)
    assert len(top) <= 125
    assert set(range(10)) <= set(top.top())
    assert len(top.top()) == 100
    assert top.address(3) == 3 << 8 | 1


def test_top_networks_decay():
    top = TopNetworks(capacity=10, half_life=10.0)
    top.add(1, 1, 8.0, now=0.0)
    assert top.count(1, 30.0) == pytest.approx(1.0)
    top.add(2, 2, 2.0, now=30.0)
    assert top.top() == [2, 1]
    top.add(3, 3, 1.0, now=10_000.0)  # long after: rescaled, not overflowed
    assert top.count(3, 10_000.0) == pytest.approx(1.0)


def test_probe_schedule_once_per_interval_and_backoff():
    s = ProbeSchedule(interval=10.0, max_backoff=80.0)
    s.sync([1, 2], now=0.0)
    assert {s.next_due(0.0), s.next_due(0.0)} == {1, 2}
    assert s.next_due(9.9) is None
    s.answered(1, 0.0)
    s.unanswered(2, 0.0)
    assert s.next_due(10.0) == 1
    assert s.next_due(19.9) is None  # 2 backs off to 20 s
    assert {s.next_due(20.0), s.next_due(20.0)} == {1, 2}
    assert s.next_due(20.0) is None
    for sent in (20.0, 60.0, 140.0):
        s.unanswered(2, sent)
    assert s.failures(2) == 4
    due = [s.next_due(t) for t in (219.9, 220.0, 220.0)]
    assert due.count(2) == 1 and due.index(2) >= 1  # capped at max_backoff: 140 + 80
    s.sync([1], now=300.0)
    assert len(s) == 1
    assert all(s.next_due(10_000.0 + i * 10) in (1, None) for i in range(5))


def test_smoothing_and_expiry():
    e = rtt.smooth(None, 100.0, 1.0)
    assert e == Estimate(100.0, 1.0, 1)
    e = rtt.smooth(e, 0.0, 2.0)
    assert e.rtt == pytest.approx(70.0) and e.samples == 2
    est = Estimates(capacity=2, expiry=60.0)
    est.sample(1, 1, 10.0, 0.0)
    est.sample(2, 2, 10.0, 1.0)
    est.sample(3, 3, 10.0, 2.0)
    assert list(est.rows) == [2, 3]
    assert est.expire(61.5) == 1 and list(est.rows) == [3]


def test_hysteresis_parse():
    assert Hysteresis.parse("10%") == Hysteresis(10.0, 0.0)
    assert Hysteresis.parse(["10%", "5ms"]) == Hysteresis(10.0, 5.0)
    assert Hysteresis.parse(7) == Hysteresis(0.0, 7.0)
    assert Hysteresis(10, 5).margin(100) == 10 and Hysteresis(10, 5).margin(20) == 5
    for bad in ("ten", True, [], "-3ms", "5s", None):
        with pytest.raises(ValueError):
            Hysteresis.parse(bad)


def test_rank_with_hysteresis():
    h = Hysteresis(10.0, 5.0)

    def nets(a, b):
        return {7: {"eu-west": Estimate(a, 0.0), "us-east": Estimate(b, 0.0)}}

    first = rtt.rank(nets(40.0, 42.0), None, h)
    assert first.rows[7][0][0] == "eu-west"
    # us-east becomes 4 ms faster: within the margin (max(10% of 44, 5) = 5): no change.
    second = rtt.rank(nets(44.0, 40.0), first, h)
    assert [n for n, _ in second.rows[7]] == ["eu-west", "us-east"]
    assert not rtt.leaders_changed(first, second)
    # 10 ms faster: beyond the margin.
    third = rtt.rank(nets(50.0, 40.0), second, h)
    assert third.rows[7][0] == ("us-east", 40.0)
    assert rtt.leaders_changed(second, third)


def test_best_per_region_takes_the_nearest_node_and_drops_stale():
    rows = [
        ("eu-west", {1: Estimate(30.0, 100.0)}),
        ("eu-west", {1: Estimate(20.0, 100.0), 2: Estimate(5.0, 0.0)}),
        ("us-east", {1: Estimate(80.0, 100.0)}),
    ]
    best = rtt.best_per_region(rows, now=100.0, expiry=60.0)
    assert {r: e.rtt for r, e in best[1].items()} == {"eu-west": 20.0, "us-east": 80.0}
    assert 2 not in best
