"""Denial of existence with one NSEC made on the fly (RFC 9824 compact answers, RFC 4470).

- A name that does not exist is answered as if it existed with no data
  ("black lies"): NOERROR (NXDOMAIN when the query set CO), one NSEC owned by
  the name, next name `\\000.name` (its immediate successor) and the types
  RRSIG, NSEC and NXNAME.
- A name that exists without the asked type: the same NSEC shape, listing the
  name's types (never the asked one).
- A delegation: the NSEC at the cut lists NS (no DS), so the resolver knows the
  child is unsigned.
- A wildcard answer: an NSEC whose owner is just before the next closer name
  and whose next name is just after it and its subtree (RFC 4470 epsilon
  functions), proving the query name itself does not exist.

No NSEC ever spans another name of the zone, so no walking is possible.
"""

from __future__ import annotations

from geodns.dnssec.sign import NSEC, NXNAME, RRSIG, type_bitmap

MAX_NAME = 255


def successor(owner: bytes) -> bytes:
    """The immediate successor of a name in canonical order: `\\000.owner` (RFC 4470 3.1.2);
    for a name too long for that, its first label with a `\\000` octet appended."""
    if len(owner) + 2 <= MAX_NAME:
        return b"\x01\x00" + owner
    first = owner[0]
    if first < 63:
        return bytes((first + 1,)) + owner[1 : 1 + first] + b"\x00" + owner[1 + first :]
    return owner  # 63-octet label in a 254-octet name: nothing follows it closely; match it instead


def after_subtree(owner: bytes) -> bytes:
    """The first name after `owner` and all its descendants: its first label with a `\\000`
    octet appended (a 63-octet label has its last octet increased instead). The next name
    of a wildcard proof: a validator takes the closest encloser from the NSEC's owner and
    next name (unbound: the longer shared ancestor with the query name), so the next
    name must not sit below the query name."""
    first = owner[0]
    label, rest = owner[1 : 1 + first], owner[1 + first :]
    if first < 63:
        return bytes((first + 1,)) + label + b"\x00" + rest
    return bytes((first,)) + label[:-1] + bytes((min(label[-1] + 1, 0xFF),)) + rest


def predecessor(owner: bytes) -> bytes:
    """A name just before `owner` in canonical order, with no plausible name between (RFC 4470
    3.1.1, simplified): the first label's last octet decreased, then filled with 0xff to 63
    octets (within the 255-octet limit); a last octet of 0 is dropped instead."""
    first = owner[0]
    label, rest = owner[1 : 1 + first], owner[1 + first :]
    if label[-1] == 0:
        label = label[:-1]
        if not label:
            return rest  # `\000.parent` follows the parent directly
        return bytes((len(label),)) + label + rest
    room = min(63, MAX_NAME - len(rest) - 1)
    label = label[:-1] + bytes((label[-1] - 1,))
    label = label + b"\xff" * max(0, room - len(label))
    return bytes((len(label),)) + label + rest


def nsec_rdata(next_name: bytes, types: set[int] | frozenset[int]) -> bytes:
    return next_name.lower() + type_bitmap(set(types) | {RRSIG, NSEC})


def nxname_rdata(owner: bytes) -> bytes:
    """The NSEC of a compact answer for a name that does not exist."""
    return nsec_rdata(successor(owner.lower()), {NXNAME})


def nodata_rdata(owner: bytes, types: set[int] | frozenset[int], qtype: int) -> bytes:
    """The NSEC of a compact answer for a name that exists without `qtype`."""
    return nsec_rdata(successor(owner.lower()), set(types) - {qtype})
