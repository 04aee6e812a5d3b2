"""The quorum rule and region health as data."""

from __future__ import annotations

import pytest

from geodns.health.quorum import (
    Drain,
    ObserverView,
    decide_target,
    needed_down,
    newer_drain,
    parse_quorum,
)
from geodns.health.risefall import State
from geodns.steer.verdict import Verdict, VerdictState

NOW = 1000.0
U, D, Q = State.UP, State.DOWN, State.UNKNOWN


def ov(name: str, state: State, heard: float = NOW - 1, until: float = NOW + 10, detail: str = "") -> ObserverView:
    return ObserverView(observer=name, state=state, since=NOW - 100, until=until, heard=heard, detail=detail)


def decide(*views: ObserverView, **kw) -> Verdict:
    kw.setdefault("stale_after", 15.0)
    return decide_target(list(views), NOW, **kw)


def test_needed_down():
    assert [needed_down("majority", n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert needed_down("any", 5) == 1 and needed_down("all", 5) == 5
    assert needed_down(2, 5) == 2 and needed_down(2, 1) == 1


def test_parse_quorum():
    assert parse_quorum("majority") == "majority" and parse_quorum("2") == 2 and parse_quorum(3) == 3
    for bad in ("most", 0, True, "-1"):
        with pytest.raises(ValueError):
            parse_quorum(bad)


def test_one_wrong_observer_cannot_fail_a_target():
    v = decide(ov("a", D, detail="HTTP 503"), ov("b", U), ov("c", U))
    assert v.up and not v.forced and v.state is VerdictState.UP
    assert v.cause.startswith("1/3 observers say down (majority needs 2)")
    assert "a down since" in v.cause and "(HTTP 503)" in v.cause


def test_majority_down_is_down():
    v = decide(ov("a", D), ov("b", D), ov("c", U))
    assert not v.up and v.state is VerdictState.DOWN and "2/3" in v.cause


def test_tie_stays_up_under_majority():
    assert decide(ov("a", D), ov("b", U)).up


def test_stale_observers_drop_out():
    # b and c went silent 20 s ago: a's view alone decides, and the cause says so
    v = decide(ov("a", D), ov("b", U, heard=NOW - 20), ov("c", U, heard=NOW - 20))
    assert not v.up
    assert "b silent 20s" in v.cause and "1/1" in v.cause


def test_unknown_views_abstain():
    v = decide(ov("a", Q), ov("b", D), ov("c", U), ov("d", D))
    assert not v.up and "2/3" in v.cause and "a undecided" in v.cause


def test_nothing_known_is_up_briefly_and_says_so():
    v = decide(ov("a", Q, until=NOW + 0.2))
    assert v.up and v.until == NOW + 0.2 and v.state is VerdictState.UNKNOWN
    assert v.cause.startswith("unknown: no observer has decided yet")
    v = decide()
    assert v.up and v.until == NOW + 1.0 and v.state is VerdictState.UNKNOWN


def test_fallback_is_used_before_any_decision():
    saved = Verdict(up=False, cause="saved state from 09:00:00Z: was down")
    v = decide(ov("a", Q), fallback=saved)
    assert not v.up and not v.forced and "saved state" in v.cause and v.until <= NOW + 1
    assert v.state is VerdictState.FALLBACK and v.cause.startswith("no fresh observation yet; ")


def test_until_is_the_earliest_view_change_or_staleness():
    v = decide(ov("a", U, until=NOW + 7), ov("b", U, until=NOW + 30), stale_after=15)
    assert v.until == NOW + 7
    v = decide(ov("a", U, until=NOW + 30, heard=NOW - 10), stale_after=15)
    assert v.until == NOW + 5


def test_rules_any_all_and_k():
    views = (ov("a", D), ov("b", U), ov("c", U))
    assert not decide(*views, rule="any").up
    assert decide(*views, rule="all").up
    assert decide(*views, rule=2).up
    assert not decide(ov("a", D), ov("b", D), ov("c", U), rule=2).up


def test_drain_wins_over_probes():
    drain = Drain("eu/10.0.0.1", True, "kernel upgrade", NOW - 5, "n1")
    v = decide(ov("a", U), ov("b", U), drain=drain)
    assert not v.up and v.forced and v.until is None and v.state is VerdictState.DRAINED
    assert "kernel upgrade" in v.cause and "n1" in v.cause
    undrain = Drain("eu/10.0.0.1", False, "", NOW, "n2")
    assert decide(ov("a", U), drain=undrain).up


def test_newer_drain_last_writer_wins():
    a = Drain("eu", True, "x", 10.0, "n1")
    b = Drain("eu", False, "", 11.0, "n2")
    assert newer_drain(a, b) is b and newer_drain(b, a) is b
    assert newer_drain(None, a) is a and newer_drain(a, None) is a
