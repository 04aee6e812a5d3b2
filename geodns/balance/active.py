"""Active health checks for backends: the health package's probes and rise/fall.

The balancer runs the same `Check`, `probe()` and rise/fall machine as the
global tier; this module only adapts them to a backend (its address and
port) and says what a view means for sending traffic.
"""

from __future__ import annotations

import random
from dataclasses import replace

from geodns.config.model import Check
from geodns.health.probes import ProbeResult, probe, probe_session
from geodns.health.risefall import Rules, State, View, observe

__all__ = [
    "Check", "ProbeResult", "Rules", "State", "View",
    "backend_check", "next_delay", "observe", "probe", "probe_session", "takes_traffic",
]


def backend_check(check: Check, port: int) -> Check:
    """The pool's check aimed at one backend: its own port unless the check names one."""
    return check if check.port is not None else replace(check, port=port)


def takes_traffic(view: View) -> bool:
    """A backend not yet probed takes traffic (as HAProxy servers start UP);
    passive checks and retries cover it until the first verdict."""
    return view.state is not State.DOWN


def next_delay(check: Check, rng: random.Random) -> float:
    """Seconds to the next probe: the interval plus or minus `jitter` seconds."""
    return max(check.interval * 0.1, check.interval + rng.uniform(-check.jitter, check.jitter))
