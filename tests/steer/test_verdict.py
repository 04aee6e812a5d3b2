"""The verdict model: its state, and the JSON form verdicts cross processes in."""

from __future__ import annotations

import json

import pytest

from geodns.steer.context import RegionInfo
from geodns.steer.verdict import (
    Verdict,
    VerdictState,
    balancer_target,
    decide_region,
    derive_state,
    region_is_up,
    region_verdict,
)

from .helpers import region


def test_state_is_derived_when_not_given():
    assert Verdict(up=True).state is VerdictState.UP
    assert Verdict(up=False).state is VerdictState.DOWN
    assert Verdict(up=False, forced=True).state is VerdictState.FORCED
    assert Verdict(up=True, forced=True).state is VerdictState.FORCED
    assert Verdict(up=True, state=VerdictState.UNKNOWN).state is VerdictState.UNKNOWN


@pytest.mark.parametrize("verdict", [
    Verdict(up=True, until=12.5, cause="2/3 observers say down", state=VerdictState.UP),
    Verdict(up=False, cause="no fresh observation yet; saved state", state=VerdictState.FALLBACK),
    Verdict(up=True, until=3.0, cause="unknown: nobody decided", state=VerdictState.UNKNOWN),
    Verdict(up=False, forced=True, cause="drained by operator", state=VerdictState.DRAINED),
    Verdict(up=False, forced=True, cause="marked down", state=VerdictState.FORCED),
])
def test_json_round_trip(verdict):
    doc = json.loads(json.dumps(verdict.to_json()))
    assert doc["state"] == verdict.state.value
    assert Verdict.from_json(doc) == verdict


def test_a_document_without_state_derives_it():
    # What a node older than the state field wrote (its state.json: up and cause only).
    assert Verdict.from_json({"up": False, "cause": "1/1 observers say down"}) == \
        Verdict(up=False, cause="1/1 observers say down", state=VerdictState.DOWN)
    assert Verdict.from_json({"up": True, "forced": True}).state is derive_state(True, True)
    # A state only a newer node knows: derived too, not refused.
    assert Verdict.from_json({"up": True, "state": "sleepy"}).state is VerdictState.UP


@pytest.mark.parametrize("doc", [
    None, [], {}, {"up": "yes"}, {"up": 1}, {"up": True, "cause": 5}, {"up": True, "forced": "no"},
    {"up": True, "until": "soon"}, {"up": True, "until": True},
])
def test_bad_documents_are_refused(doc):
    with pytest.raises(ValueError):
        Verdict.from_json(doc)


NOW = 1000.0
UP = Verdict(up=True, until=NOW + 5, cause="ok")
DOWN = Verdict(up=False, until=NOW + 3, cause="2/3 observers say down")
EPS = ("eu/1", "eu/2", "eu/3")


def test_region_min_healthy():
    verdicts = {"eu/1": UP, "eu/2": DOWN, "eu/3": UP}
    v = decide_region("eu", EPS, 2, verdicts)
    assert v.up and v.state is VerdictState.UP
    assert v.cause == "2/3 endpoints up (min_healthy 2)" and v.until == NOW + 3
    v = decide_region("eu", EPS, 3, verdicts)
    assert not v.up and not v.forced and v.state is VerdictState.DOWN
    assert "2/3 endpoints up, below min_healthy 3: eu/2 down: 2/3 observers say down" in v.cause


def test_region_endpoint_without_verdict_is_up():
    assert decide_region("eu", EPS, 3, {}).up
    v = decide_region("eu", EPS, 3, {"eu/2": DOWN})
    assert not v.up and v.cause.startswith("2/3 endpoints up, below min_healthy 3")


def test_region_balancer_down_fails_region():
    v = decide_region("eu", ("eu/1",), 1, {"eu/1": UP, balancer_target("eu"): Verdict(up=False, cause="HTTP 503")})
    assert not v.up and "balancer check down: HTTP 503" in v.cause
    v = decide_region("eu", ("eu/1",), 1, {"eu/1": UP, balancer_target("eu"): UP})
    assert v.up and v.cause == "1/1 endpoints up (min_healthy 1); balancer check up"


def test_region_all_endpoints_drained_is_forced():
    drained = Verdict(up=False, forced=True, cause="drained", state=VerdictState.DRAINED)
    v = decide_region("eu", ("eu/1", "eu/2"), 1, {"eu/1": drained, "eu/2": drained})
    assert not v.up and v.forced and v.state is VerdictState.FORCED
    mixed = decide_region("eu", ("eu/1", "eu/2"), 1, {"eu/1": drained, "eu/2": DOWN})
    assert not mixed.forced and mixed.state is VerdictState.DOWN


def test_region_own_down_verdict_decides():
    own = Verdict(up=False, forced=True, cause="drained by operator: move out", state=VerdictState.DRAINED)
    assert decide_region("eu", ("eu/1",), 1, {"eu/1": UP}, own=own) is own
    # An own verdict that is up does not hide the endpoints.
    assert not decide_region("eu", ("eu/1",), 1, {"eu/1": DOWN}, own=UP).up


def test_region_without_checks_is_up_unbounded():
    v = decide_region("eu", ("eu/1",), 1, {"eu/1": Verdict(up=True)})
    assert v.up and v.until is None


def test_configured_region_reads_its_own_balancer_and_endpoint_verdicts():
    info = RegionInfo.of(region("eu-west", 51.5, -0.1, "192.0.2.1", "2001:db8::1", min_healthy=2))
    assert region_is_up(info, {})
    one_down = {"eu-west/2001:db8::1": DOWN}
    assert not region_is_up(info, one_down)
    assert region_verdict(info, one_down).cause.startswith("1/2 endpoints up, below min_healthy 2")
    assert not region_is_up(info, {balancer_target("eu-west"): DOWN})
    drained = Verdict(up=False, forced=True, cause="drained: test", state=VerdictState.DRAINED)
    assert region_verdict(info, {"eu-west": drained}) is drained
