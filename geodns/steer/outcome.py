"""What a step returns: the candidates it keeps and a note saying why."""

from __future__ import annotations

from dataclasses import dataclass

from geodns.steer.context import Candidates

# Built once per step of each steering run: plain slotted dataclasses, not frozen ones
# (see Context); no one changes an outcome.


@dataclass(slots=True)
class Kept:
    candidates: Candidates
    note: str


@dataclass(slots=True)
class Split:
    """The candidates split into weighted alternatives (one is picked per query)."""

    branches: tuple[tuple[int, Candidates], ...]
    note: str


Outcome = Kept | Split
