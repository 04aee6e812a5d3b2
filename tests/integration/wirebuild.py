"""Hand-built query bytes for what dnspython will not send (two OPTs, malformed ECS, ...)."""

from __future__ import annotations

import struct


def name_wire(name: str) -> bytes:
    labels = [p for p in name.rstrip(".").split(".") if p]
    return b"".join(bytes([len(p)]) + p.encode() for p in labels) + b"\x00"


def question(name: str, qtype: int = 1, qclass: int = 1) -> bytes:
    return name_wire(name) + struct.pack("!HH", qtype, qclass)


def opt_rr(
    payload: int = 1232,
    version: int = 0,
    do: bool = False,
    options: bytes = b"",
    ext_rcode: int = 0,
) -> bytes:
    ttl = (ext_rcode << 24) | (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def ecs_option(family: int, source: int, scope: int, address: bytes) -> bytes:
    body = struct.pack("!HBB", family, source, scope) + address
    return struct.pack("!HH", 8, len(body)) + body


def query(
    name: str,
    qtype: int = 1,
    additional: list[bytes] | tuple[bytes, ...] = (),
    qid: int = 0x2A2A,
    flags: int = 0,
) -> bytes:
    return (
        struct.pack("!HHHHHH", qid, flags, 1, 0, 0, len(additional))
        + question(name, qtype)
        + b"".join(additional)
    )
