"""`latency`: the regions with the lowest RTT from the client's network.

In order: the RTTs the nodes measured to the client's network (its /24 or /48,
`Measured`, ranked with hysteresis by the control plane) or, for an ECS client
whose network was not measured, to its resolver's network; the operator's table
(`LatencyTable`), and otherwise the candidates unchanged for the next step.
"""

from geodns.steer.context import Candidates, Context
from geodns.steer.measured import network_text
from geodns.steer.outcome import Kept


def latency(candidates: Candidates, ctx: Context, params: tuple[float, str | None] = (0.0, None)) -> Kept:
    tolerance = params[0] if params else 0.0
    measured = ctx.measured
    if measured is not None and measured.rows:
        found, via = measured.lookup(ctx.client.address), ""
        if found is None and ctx.client.resolver is not None:
            found, via = measured.lookup(ctx.client.resolver), "resolver "
        if found is not None:
            kept = _by_measurement(candidates, ctx, found[0], found[1], tolerance, via)
            if kept is not None:
                return kept
    table = ctx.latency
    if table is None:
        return Kept(candidates, "no latency table loaded: keeping all")
    found = table.lookup(ctx.client.address, ctx.client.location)
    if found is None:
        return Kept(candidates, "client's network not in the latency table: keeping all")
    row, matched = found
    measured_rows = sorted((row[c], i, c) for i, c in enumerate(candidates) if c in row)
    if not measured_rows:
        return Kept(candidates, f"{matched}: no RTT for any candidate: keeping all")
    best = measured_rows[0][0]
    kept = tuple(c for rtt, _, c in measured_rows if rtt <= best + tolerance)
    if not ctx.explain:
        return Kept(kept, "")
    rtts = ", ".join(f"{c} {rtt:.0f} ms" for rtt, _, c in measured_rows[:3])
    return Kept(kept, f"{matched}: {rtts}")


def _by_measurement(candidates: Candidates, ctx: Context, ranking, key: int, tolerance: float, via: str = "") -> Kept | None:
    """The measured regions among the candidates, leader first, with those within `tolerance` ms
    of it; None when no candidate was measured (the table decides then)."""
    wanted = set(candidates)
    ranked = [(region, rtt) for region, rtt in ranking if region in wanted]
    if not ranked:
        return None
    lead = ranked[0][1]
    kept = tuple(region for region, rtt in ranked if region == ranked[0][0] or abs(rtt - lead) <= tolerance)
    if not ctx.explain:
        return Kept(kept, "")
    rtts = ", ".join(f"{region} {rtt:.1f} ms" for region, rtt in ranked[:4])
    margin = f" (hysteresis {ctx.measured.hysteresis})" if ctx.measured.hysteresis else ""
    return Kept(kept, f"measured {via}{network_text(key)}: {rtts}{margin}")
