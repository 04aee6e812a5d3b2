"""`weighted`: split traffic between candidates by weight; weight 0 is a standby.

The split is not decided here but per query, after the answer cache (see
`geodns.steer.chain`), so caching never freezes a weighted choice.
"""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept, Split


def weighted(candidates: Candidates, ctx: Context, params: tuple[tuple[str, int], ...] | None = None) -> Kept | Split:
    weights = dict(params) if params else {}

    def weight(region: str) -> int:
        # With weights given in the step, a region it does not list is a standby: an operator
        # writing {us-east: 3, us-west: 1} means 75/25, whatever else is a candidate.
        if params:
            return weights.get(region, 0)
        return ctx.regions[region].region.weight

    active = [(weight(c), c) for c in candidates if weight(c) > 0]
    if not active:
        standby = [(1, c) for c in candidates]
        if not standby:
            return Kept((), "no candidates")
        if len(standby) == 1:
            return Kept((standby[0][1],), f"only standby {standby[0][1]} left")
        return Split(tuple((w, (c,)) for w, c in standby), "only standbys left: equal split")
    if len(active) == 1:
        return Kept((active[0][1],), f"{active[0][1]} is the only weighted candidate")
    total = sum(w for w, _ in active)
    note = ", ".join(f"{c} {100 * w / total:.0f}%" for w, c in active)
    return Split(tuple((w, (c,)) for w, c in active), note)
