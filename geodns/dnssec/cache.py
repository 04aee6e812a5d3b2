"""The signature cache: RRSIGs by canonical RRset, shared by every snapshot of a key set.

A steered name has a few distinct answers (one per region or set of regions)
however many clients and places ask, so signatures are keyed by the RRset
itself (owner, type, TTL, sorted RDATA, and the RRSIG label count): their
number grows with the distinct answers, not with the query rate. An entry
holds its window's renewal time; a lookup after it signs again (one RRset at
a time, when it is next asked for: renewals spread over the day by the per-
RRset grid offset, never a flush of everything at once). Bounded: the oldest
tenth goes when full.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from geodns.dnssec.keys import Signer
from geodns.dnssec.sign import canonical_key, rrsig_rdata, window


class SignatureCache:
    __slots__ = ("_entries", "max_entries", "made", "hits")

    def __init__(self, max_entries: int = 100_000):
        self._entries: dict[bytes, tuple[int, int, tuple[bytes, ...]]] = {}
        """canonical RRset + labels -> (renew at, expiration, RRSIG RDATAs, one per signing key)."""
        self.max_entries = max_entries
        self.made = 0
        """Signatures made (each a private-key operation)."""
        self.hits = 0

    def rrsigs(
        self,
        signers: Sequence[Signer],
        owner: bytes,
        rtype: int,
        ttl: int,
        rdatas: list[bytes],
        labels: int,
        now: float,
    ) -> tuple[tuple[bytes, ...], int]:
        """The RRSIG RDATAs for an RRset (one per active key) and when they must be renewed."""
        key = canonical_key(owner, rtype, ttl, rdatas) + bytes((labels,))
        hit = self._entries.get(key)
        if hit is not None and now < hit[0]:
            self.hits += 1
            return hit[2], hit[0]
        win = window(now, key)
        sigs = tuple(rrsig_rdata(s.key, s.sign, owner, rtype, ttl, rdatas, win, labels) for s in signers)
        self.made += len(sigs)
        entries = self._entries
        if len(entries) >= self.max_entries and key not in entries:
            for old in list(itertools.islice(entries, max(1, self.max_entries // 10))):
                del entries[old]
        entries[key] = (win.renew, win.expiration, sigs)
        return sigs, win.renew

    def earliest_expiration(self, now: float) -> int | None:
        """The earliest expiration among signatures that are still served (not yet due for
        renewal): what the signature-expiry metric reports."""
        live = [e[1] for e in self._entries.values() if now < e[0]]
        return min(live) if live else None

    def __len__(self) -> int:
        return len(self._entries)
