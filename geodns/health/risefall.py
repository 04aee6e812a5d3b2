"""The rise/fall state machine: one observer's view of one target.

Everything that affects how raw probe results become a view lives in this
file: the states, the one transition table, the hold-down against flapping
and the earliest moment a view could change. It is pure: results and times
go in, a new `View` comes out. Nothing here sleeps, reads a clock or logs.

Like HAProxy's and gdnsd's monitors, a view changes only after `fall`
consecutive failures or `rise` consecutive successes. A target seen by no
probe yet is UNKNOWN, not up: the quorum (`geodns.health.quorum`) decides what
an unknown view is worth, so that a node that just started never answers as
if everything were up because it has not looked yet.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from geodns.config.model import Check

__all__ = ["State", "Rules", "View", "observe", "earliest_change", "hold_for"]


class State(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Rules:
    """How results become a view (from a `Check`, see `Rules.from_check`)."""

    rise: int = 2
    """Consecutive successes that bring a target up."""
    fall: int = 3
    """Consecutive failures that bring a target down."""
    interval: float = 5.0
    """Seconds between two probes of the target (the earliest a next result comes)."""
    hold_down: float = 25.0
    """Minimum time down after the first flap; doubled for each further flap."""
    flap_window: float = 100.0
    """An up period shorter than this, ended by a fall, counts as a flap."""
    max_hold: float = 250.0
    """The hold-down never exceeds this."""

    @classmethod
    def from_check(cls, check: Check) -> Rules:
        # A target that went down after a short stay up is held down for one
        # full fall+rise cycle, doubling per flap (as BGP route-flap damping
        # does), so a flapping backend cannot bounce answers at probe speed.
        cycle = (check.fall + check.rise) * check.interval
        return cls(
            rise=check.rise,
            fall=check.fall,
            interval=check.interval,
            hold_down=cycle,
            flap_window=4 * cycle,
            max_hold=10 * cycle,
        )


@dataclass(frozen=True, slots=True)
class View:
    """One observer's view of one target."""

    state: State = State.UNKNOWN
    since: float = 0.0
    """When the view entered `state` (for UNKNOWN: when it was created)."""
    at: float = 0.0
    """Start time of the latest probe whose result is counted here (0: none yet)."""
    ok_run: int = 0
    """Consecutive successes up to `at`."""
    fail_run: int = 0
    """Consecutive failures up to `at`."""
    seq: int = 0
    """Number of results counted (a peer keeps the view with the highest)."""
    detail: str = ""
    """What the latest probe saw."""
    flaps: int = 0
    """Recent falls that followed a short stay up (reset by a long stay up)."""
    recovered: bool = False
    """The current UP state was entered from DOWN (a fall soon after is a flap)."""
    hold_until: float = 0.0
    """A DOWN view does not rise before this time (flap hold-down)."""


# The whole machine. For (state, probe ok?) the counter that must reach its
# threshold and the state then entered; None: the result cannot change state.
# DOWN -> UP is further guarded by the hold-down (see `observe`).
_TABLE: dict[tuple[State, bool], tuple[str, State] | None] = {
    (State.UNKNOWN, True): ("rise", State.UP),
    (State.UNKNOWN, False): ("fall", State.DOWN),
    (State.UP, True): None,
    (State.UP, False): ("fall", State.DOWN),
    (State.DOWN, True): ("rise", State.UP),
    (State.DOWN, False): None,
}


def hold_for(flaps: int, rules: Rules) -> float:
    """Seconds a view stays down after its `flaps`-th consecutive flap."""
    if flaps <= 0:
        return 0.0
    return min(rules.max_hold, rules.hold_down * 2 ** (flaps - 1))


def observe(view: View, ok: bool, at: float, detail: str, rules: Rules) -> View:
    """The view after one more probe result (`at`: when that probe started)."""
    ok_run = view.ok_run + 1 if ok else 0
    fail_run = 0 if ok else view.fail_run + 1
    new = replace(view, at=at, ok_run=ok_run, fail_run=fail_run, seq=view.seq + 1, detail=detail)
    rule = _TABLE[(view.state, ok)]
    if rule is None:
        return new
    counter, target = rule
    run = ok_run if ok else fail_run
    if run < getattr(rules, counter):
        return new
    if target is State.UP and at < view.hold_until:
        return new  # risen enough, but still held down after flapping
    if target is State.DOWN:
        # A flap is a recovery that did not last: down, up, down again soon.
        # The first fall after a node starts watching is not one.
        flapped = view.state is State.UP and view.recovered and at - view.since < rules.flap_window
        flaps = view.flaps + 1 if flapped else 0
        return replace(new, state=State.DOWN, since=at, flaps=flaps, recovered=False,
                       hold_until=at + hold_for(flaps, rules))
    return replace(new, state=State.UP, since=at, hold_until=0.0,
                   recovered=view.state is State.DOWN)


def earliest_change(view: View, rules: Rules) -> float:
    """The soonest time this view could change state, given probes come no
    faster than one per `rules.interval`."""
    last = view.at or view.since
    if view.state is State.UP:
        return last + (rules.fall - view.fail_run) * rules.interval
    if view.state is State.DOWN:
        return max(view.hold_until, last + (rules.rise - view.ok_run) * rules.interval)
    needed = min(rules.rise - view.ok_run, rules.fall - view.fail_run)
    if not view.at:
        return view.since + (needed - 1) * rules.interval  # the first probe may come at once
    return view.at + needed * rules.interval
