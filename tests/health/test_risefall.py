"""The rise/fall machine as data: results in, views out."""

from __future__ import annotations

from geodns.config.model import Check
from geodns.health.risefall import Rules, State, View, earliest_change, hold_for, observe

RULES = Rules(rise=2, fall=3, interval=1.0, hold_down=10.0, flap_window=30.0, max_hold=40.0)


def run(results: str, view: View | None = None, start: float = 0.0, rules: Rules = RULES) -> list[View]:
    """Feed '+' (ok) and '-' (fail) one per second; return every view."""
    v = view or View(since=start)
    out = []
    for i, c in enumerate(results):
        v = observe(v, c == "+", start + i, f"r{i}", rules)
        out.append(v)
    return out


def states(views: list[View]) -> str:
    return "".join({State.UNKNOWN: "?", State.UP: "U", State.DOWN: "D"}[v.state] for v in views)


def test_unknown_until_rise_or_fall():
    assert states(run("+")) == "?"
    assert states(run("++")) == "?U"
    assert states(run("--")) == "??"
    assert states(run("---")) == "??D"
    # a mixed start decides nothing until one run completes
    assert states(run("+-+-++")) == "?????U"


def test_fall_after_three_failures_and_rise_after_two():
    assert states(run("++---++")) == "?UUUDDU"
    # one success in the middle of failures resets the fall count
    assert states(run("++--+---")) == "?UUUUUUD"


def test_counts_seq_and_detail():
    v = run("++-")[-1]
    assert (v.ok_run, v.fail_run, v.seq, v.detail, v.at) == (0, 1, 3, "r2", 2.0)
    assert v.since == 1.0  # became up at the second result


DOWN = View(state=State.DOWN, since=-10.0)


def test_flap_is_held_down():
    # down, up at t=1, down again at t=4 (a 3 s stay up < flap_window): a flap, held 10 s
    views = run("++---" + "+" * 14, DOWN)
    assert views[1].state is State.UP and views[1].recovered
    down = views[4]
    assert down.state is State.DOWN and down.flaps == 1 and down.hold_until == 4 + 10
    # two successes at t=5,6 would rise, but the hold keeps it down until t=14
    assert states(views[5:]) == "D" * 9 + "UUUUU"
    assert views[14].since == 14


def test_first_fall_after_the_first_rise_is_not_a_flap():
    views = run("++---++")
    assert views[4].flaps == 0 and states(views) == "?UUUDDU"


def test_flaps_double_the_hold_and_a_long_stay_resets():
    assert hold_for(0, RULES) == 0 and hold_for(1, RULES) == 10
    assert hold_for(2, RULES) == 20 and hold_for(3, RULES) == 40 and hold_for(9, RULES) == 40
    v = View(state=State.UP, since=0.0, at=0.0, recovered=True)
    v = run("---", v, start=5)[-1]
    assert v.flaps == 1
    v = run("++", View(state=State.DOWN, since=10.0, flaps=1), start=20)[-1]
    v = run("---", v, start=25)[-1]
    assert v.flaps == 2 and v.hold_until == 27 + 20
    long_up = View(state=State.UP, since=0.0, flaps=3, recovered=True)
    v = run("---", long_up, start=100)[-1]
    assert v.flaps == 0 and v.hold_until == 102


def test_first_fall_from_unknown_is_not_a_flap():
    v = run("---")[-1]
    assert v.flaps == 0 and v.hold_until == 2


def test_earliest_change():
    assert earliest_change(View(since=10.0), RULES) == 10 + 1  # min(rise, fall) - 1 intervals
    up = run("++")[-1]
    assert earliest_change(up, RULES) == 1 + 3
    failing = run("++--")[-1]
    assert earliest_change(failing, RULES) == 3 + 1
    down = run("---")[-1]
    assert earliest_change(down, RULES) == 2 + 2
    held = run("++---", DOWN)[-1]
    assert earliest_change(held, RULES) == 14


def test_rules_from_check_defaults():
    r = Rules.from_check(Check(kind="http"))
    assert (r.rise, r.fall, r.interval) == (2, 3, 5.0)
    assert r.hold_down == 25.0 and r.flap_window == 100.0 and r.max_hold == 250.0
