"""Verdicts from views: the quorum rule, region health and drains.

Pure functions over values. The service (`geodns.health.service`) collects
every observer's latest view of each target, with the local time it last
heard of it, and asks this module what the verdict is. Nothing here reads a
clock: `now` is an argument.

The rules, in the order they apply:

1. A drain (an operator's observation) wins over every probe: the target is
   down with `forced=True` and the drain's reason as its cause.
2. Only *fresh* views count: an observer not heard of for `stale_after`
   seconds drops out, and a view still UNKNOWN (not a full rise or fall run
   yet) abstains.
3. Among the fresh views, the target is down when at least `needed_down`
   observers say down. The default rule, `majority`, needs more than half of
   the reporting observers, so one checker with a bad route to a healthy
   data centre cannot fail it over on its own (a tie stays up).
4. When no observer has a fresh decided view, the caller's fallback (saved
   state, or a peer's last verdict) is used; failing that the target is
   "unknown": up, with a short `until`, and the cause says so.

A region's verdict follows from its endpoints' and its balancer check's by the
one region rule, `geodns.steer.verdict.decide_region`; a drained region is
down whatever they say.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from dataclasses import dataclass

from geodns.health.risefall import State
from geodns.steer.verdict import Verdict, VerdictState

__all__ = [
    "ObserverView",
    "Drain",
    "QUORUM_RULES",
    "needed_down",
    "parse_quorum",
    "decide_target",
    "drained",
    "newer_drain",
]

QUORUM_RULES = ("majority", "any", "all")
UNKNOWN_RETRY = 1.0
"""Seconds an "unknown, assumed up" verdict is promised for at most."""


@dataclass(frozen=True, slots=True)
class ObserverView:
    """What one observer last said about one target, in this node's clock."""

    observer: str
    state: State
    since: float
    """When the observer's view entered `state`."""
    until: float
    """Earliest time the observer's view could change."""
    heard: float
    """When this node last heard of this view (own probes: the probe time)."""
    detail: str = ""
    """What the observer's latest probe saw."""


@dataclass(frozen=True, slots=True)
class Drain:
    """An operator observation: a target taken out (or put back) by hand.

    An undrain is kept as a Drain with `active=False` so that it travels to
    peers and beats the older drain there (last writer wins, by `at`).
    """

    target: str
    active: bool
    reason: str
    at: float
    """Epoch seconds when the operator asked."""
    by: str
    """The node that took the request."""
    signature: str = ""
    """`by`'s Ed25519 signature (base64) over the other fields, so peers can relay it
    but not forge it (`geodns.health.drains`)."""


def newer_drain(a: Drain | None, b: Drain | None) -> Drain | None:
    """The drain that wins of two for the same target (last writer wins)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if (b.at, b.by) > (a.at, a.by) else a


def parse_quorum(rule: str | int) -> str | int:
    """Validate a quorum rule: `majority`, `any`, `all`, or a number k >= 1 of
    observers that must say down. Raises ValueError."""
    if isinstance(rule, bool):
        raise ValueError(f"quorum must be one of {', '.join(QUORUM_RULES)} or a number")
    if isinstance(rule, int):
        if rule < 1:
            raise ValueError("quorum number must be at least 1")
        return rule
    if isinstance(rule, str) and rule in QUORUM_RULES:
        return rule
    if isinstance(rule, str) and rule.isdigit():
        return parse_quorum(int(rule))
    raise ValueError(f"quorum must be one of {', '.join(QUORUM_RULES)} or a number, not {rule!r}")


def needed_down(rule: str | int, reporting: int) -> int:
    """How many of `reporting` fresh observers must say down for a down verdict."""
    if reporting <= 0:
        return 1
    if rule == "any":
        return 1
    if rule == "all":
        return reporting
    if rule == "majority":
        return reporting // 2 + 1
    # A fixed k: when fewer observers report, the ones left decide together.
    return min(int(rule), reporting)


_CLOCKS: dict[int, str] = {}


def _clock(t: float) -> str:
    """HH:MM:SSZ of an epoch time (cached: a recompute of 10,000 targets asks
    for the same few seconds over and over)."""
    second = int(t // 1)
    text = _CLOCKS.get(second)
    if text is None:
        if len(_CLOCKS) > 4096:
            _CLOCKS.clear()
        text = _CLOCKS[second] = _time.strftime("%H:%M:%S", _time.gmtime(second)) + "Z"
    return text


def drained(drain: Drain) -> Verdict:
    """The verdict on a target an active drain takes out."""
    return Verdict(
        up=False,
        forced=True,
        until=None,
        state=VerdictState.DRAINED,
        cause=f"drained by operator via {drain.by} at {_clock(drain.at)}: {drain.reason or 'no reason given'}",
    )


def decide_target(
    views: Sequence[ObserverView],
    now: float,
    *,
    stale_after: float,
    rule: str | int = "majority",
    drain: Drain | None = None,
    fallback: Verdict | None = None,
) -> Verdict:
    """The verdict on one target from every observer's latest view of it."""
    if drain is not None and drain.active:
        return drained(drain)
    fresh: list[ObserverView] = []
    silent: list[ObserverView] = []
    decided: list[ObserverView] = []
    downs = 0
    for v in views:
        if now - v.heard > stale_after:
            silent.append(v)
            continue
        fresh.append(v)
        if v.state is not State.UNKNOWN:
            decided.append(v)
            downs += v.state is State.DOWN
    if not decided:
        pending = [v.until for v in fresh if v.until > now]
        until = min([now + UNKNOWN_RETRY, *pending])
        if fallback is not None:
            return Verdict(up=fallback.up, forced=False, until=until, state=VerdictState.FALLBACK,
                           cause=f"no fresh observation yet; {fallback.cause}")
        return Verdict(up=True, until=until, state=VerdictState.UNKNOWN,
                       cause="unknown: no observer has decided yet; assumed up for now")
    need = needed_down(rule, len(decided))
    down = downs >= need
    # The verdict could change when any counted view could, or when a view
    # goes stale and leaves the count.
    until = min(
        max(now, min(v.until for v in fresh)),
        min(v.heard for v in fresh) + stale_after,
    )
    if len(decided) > 1:
        decided.sort(key=lambda v: v.observer)
    parts = [
        f"{v.observer} {v.state.value} since {_clock(v.since)} ({v.detail})" if v.detail
        else f"{v.observer} {v.state.value} since {_clock(v.since)}"
        for v in decided
    ]
    if len(decided) < len(fresh):
        parts += [f"{v.observer} undecided" for v in fresh if v.state is State.UNKNOWN]
    if silent:
        parts += [f"{v.observer} silent {now - v.heard:.0f}s" for v in silent]
    rule_text = rule if isinstance(rule, str) else f"{rule} down"
    cause = f"{downs}/{len(decided)} observers say down ({rule_text} needs {need}): " + "; ".join(parts)
    return Verdict(up=not down, until=until, cause=cause,
                   state=VerdictState.DOWN if down else VerdictState.UP)
