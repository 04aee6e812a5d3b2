"""Signing, pure: a canonical RRset and a validity window in, RRSIG RDATA out.

Every node of a deployment must emit the same RRSIG for the same RRset at the
same time, so nothing here reads a clock or a random source: the window comes
from `window()` (a grid in time, shifted per RRset by a stable hash so that
renewals spread over the day instead of landing together), and the
signatures are deterministic (RFC 6979 for ECDSA, Ed25519 by construction).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from geodns.dnssec.keys import Key, name_wire

RRSIG = 46
NSEC = 47
DNSKEY = 48
CDS = 59
CDNSKEY = 60
NXNAME = 128
"""RFC 9824: the meta-type in a compact answer's NSEC bitmap that says the name does not exist."""
CLASS_IN = 1

GRID = 86_400
"""Signatures are renewed once a day per RRset (at a point of the day fixed by the RRset)."""
LIFETIME = 8 * 86_400
"""...and are valid for eight days from their grid point: a node that stops renewing, or a
resolver that cached an answer, has a week of margin (the longest TTL is far shorter)."""
SKEW = 3_600
"""Inception this far before the grid point, for validators whose clocks run behind."""


@dataclass(frozen=True, slots=True)
class Window:
    """When a signature is valid and when it must be replaced."""

    inception: int
    expiration: int
    renew: int
    """Unix time of the RRset's next grid point: a signature is replaced from then on."""


def window(now: float, rrset_key: bytes, grid: int = GRID, lifetime: int = LIFETIME) -> Window:
    """The validity window for an RRset at `now`: the same on every node for the same RRset."""
    offset = zlib.crc32(rrset_key) % grid
    start = int((now - offset) // grid) * grid + offset
    return Window(start - SKEW, start + lifetime, start + grid)


def labels_of(owner: bytes) -> int:
    """RRSIG Labels: the owner's label count, not counting the root or a leading `*` (RFC 4034 3.1.3)."""
    count, pos = 0, 0
    while owner[pos]:
        count += 1
        pos += owner[pos] + 1
    if owner[:2] == b"\x01*":
        count -= 1
    return count


def canonical_key(owner: bytes, rtype: int, ttl: int, rdatas: list[bytes]) -> bytes:
    """The canonical RRset (owner lower case, type, TTL, sorted distinct RDATA) as one byte string:
    the signature cache's key and the stable hash's input."""
    body = b"".join(struct.pack("!H", len(r)) + r for r in sorted(set(rdatas)))
    return owner.lower() + struct.pack("!HI", rtype, ttl) + body


def rrsig_rdata(
    key: Key,
    sign,
    owner: bytes,
    rtype: int,
    ttl: int,
    rdatas: list[bytes],
    win: Window,
    labels: int | None = None,
) -> bytes:
    """RRSIG RDATA over an RRset (RFC 4034 3.1, 6.2; RFC 4035 5.3.2).

    `owner` and every RDATA are in canonical wire form (uncompressed, names in
    lower case); `labels` below the owner's count marks a wildcard expansion,
    signed as `*.` + the owner's rightmost `labels` labels. `sign` is the key's
    `Signer.sign`.
    """
    owner = owner.lower()
    total = labels_of(owner)
    if labels is None:
        labels = total
    signed_owner = owner
    if labels < total:
        pos = 0
        for _ in range(total - labels):
            pos += owner[pos] + 1
        signed_owner = b"\x01*" + owner[pos:]
    head = struct.pack("!HBBIIIH", rtype, key.algorithm, labels, ttl, win.expiration, win.inception, key.tag)
    head += name_wire(key.zone)
    prefix = signed_owner + struct.pack("!HHI", rtype, CLASS_IN, ttl)
    data = head + b"".join(prefix + struct.pack("!H", len(r)) + r for r in sorted(set(rdatas)))
    return head + sign(data)


def type_bitmap(types: set[int] | frozenset[int]) -> bytes:
    """The NSEC type bit maps field (RFC 4034 4.1.2)."""
    out = bytearray()
    by_window: dict[int, bytearray] = {}
    for t in sorted(types):
        bits = by_window.setdefault(t >> 8, bytearray(32))
        bits[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    for number in sorted(by_window):
        bits = by_window[number]
        length = max(i for i, b in enumerate(bits) if b) + 1
        out += bytes((number, length)) + bits[:length]
    return bytes(out)
