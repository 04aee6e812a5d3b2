"""Passive health: a circuit breaker fed by the outcome of real requests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class CircuitBreaker:
    """Counts consecutive failures (connect errors, 5xx); opens for `cool_off` seconds.

    After the cool-off the breaker is half-open: the backend gets traffic
    again, one success closes the breaker, and a single failure reopens it at
    once (like HAProxy's `observe layer7` + `error-limit` + `on-error mark-down`).
    Time is passed in, so the rules are testable without sleeping.
    """

    failures: int = 5
    cool_off: float = 10.0
    streak: int = 0
    open_until: float = 0.0
    half_open: bool = False
    trips: int = 0

    def is_open(self, now: float) -> bool:
        return now < self.open_until

    def record(self, ok: bool, now: float) -> bool:
        """Feed one outcome; True when this outcome tripped the breaker."""
        if ok:
            self.streak = 0
            self.half_open = False
            return False
        if self.is_open(now):
            return False  # late results of requests sent before the trip
        self.streak += 1
        if self.half_open or self.streak >= self.failures:
            self.open_until = now + self.cool_off
            self.streak = 0
            self.half_open = True
            self.trips += 1
            return True
        return False

    def reset(self) -> None:
        self.streak = 0
        self.open_until = 0.0
        self.half_open = False
