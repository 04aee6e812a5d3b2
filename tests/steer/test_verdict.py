"""The verdict model: its state, and the JSON form verdicts cross processes in."""

from __future__ import annotations

import json

import pytest

from geodns.steer.verdict import Verdict, VerdictState, derive_state


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
