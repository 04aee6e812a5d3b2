"""Request rate over a sliding window of one-second buckets; time is passed in."""

from __future__ import annotations


class RateWindow:
    """Counts events per whole second over the last `seconds` seconds."""

    def __init__(self, seconds: int = 10) -> None:
        self.seconds = seconds
        self._buckets = [0] * seconds
        self._stamps = [-1] * seconds

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        i = second % self.seconds
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._buckets[i] = 0
        self._buckets[i] += count

    def rate(self, now: float) -> float:
        """Events per second over the last full window (the current second included)."""
        second = int(now)
        oldest = second - self.seconds + 1
        total = sum(c for c, s in zip(self._buckets, self._stamps, strict=True) if oldest <= s <= second)
        return total / self.seconds
