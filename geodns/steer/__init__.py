"""Steering: pure steps over candidate regions, and the chain that runs them."""

from geodns.steer.chain import STEPS, Branch, Decision, TraceStep, run_chain
from geodns.steer.context import Candidates, Client, Context, RegionInfo
from geodns.steer.latency_table import LatencyTable, LatencyTableError, load_latency_table
from geodns.steer.outcome import Kept, Split
from geodns.steer.verdict import (
    UP,
    Verdict,
    Verdicts,
    VerdictState,
    earliest_change,
    endpoint_target,
)

__all__ = [
    "STEPS",
    "UP",
    "Branch",
    "Candidates",
    "Client",
    "Context",
    "Decision",
    "Kept",
    "LatencyTable",
    "LatencyTableError",
    "RegionInfo",
    "Split",
    "TraceStep",
    "Verdict",
    "Verdicts",
    "VerdictState",
    "earliest_change",
    "endpoint_target",
    "load_latency_table",
    "run_chain",
]
