"""`latency`: the regions with the lowest RTT from the client's network."""

from geodns.steer.context import Candidates, Context
from geodns.steer.outcome import Kept


def latency(candidates: Candidates, ctx: Context, params: tuple[float, str | None] = (0.0, None)) -> Kept:
    tolerance = params[0] if params else 0.0
    table = ctx.latency
    if table is None:
        return Kept(candidates, "no latency table loaded: keeping all")
    found = table.lookup(ctx.client.address, ctx.client.location)
    if found is None:
        return Kept(candidates, "client's network not in the latency table: keeping all")
    row, matched = found
    measured = sorted((row[c], i, c) for i, c in enumerate(candidates) if c in row)
    if not measured:
        return Kept(candidates, f"{matched}: no RTT for any candidate: keeping all")
    best = measured[0][0]
    kept = tuple(c for rtt, _, c in measured if rtt <= best + tolerance)
    if not ctx.explain:
        return Kept(kept, "")
    rtts = ", ".join(f"{c} {rtt:.0f} ms" for rtt, _, c in measured[:3])
    return Kept(kept, f"{matched}: {rtts}")
