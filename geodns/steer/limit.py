"""`limit N`: keep the first N candidates (multi-value answers)."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def limit(candidates: Candidates, ctx: Context, params: int) -> Kept:
    kept = candidates[:params]
    return Kept(kept, f"first {params}" if len(candidates) > params else "nothing to cut")
