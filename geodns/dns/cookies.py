"""DNS cookies (RFC 7873) with the interoperable server cookie of RFC 9018.

A client sends an 8-byte client cookie, and, once it has one, the server
cookie we gave it. We answer every client cookie with a server cookie:

    version 1 | 3 reserved bytes (0) | timestamp (4, seconds, serial arithmetic) | hash (8)
    hash = SipHash-2-4(client cookie | version | reserved | timestamp | client address, secret)

The same format as BIND, Knot and PowerDNS, so every node of a deployment
(geodns or not) that shares the 128-bit secret accepts the cookies of the
others. A server cookie is valid from 1 hour in the past to 5 minutes in the
future (RFC 9018 4.3); one older than half an hour is replaced by a fresh one,
a younger one is echoed as it came. A cookie made with the previous secret is
still valid (for a rotation) and is answered with one made with the current.
An invalid server cookie is not an error: the query gets its normal answer
with a new cookie (RFC 7873 5.2.3-5.2.4); a malformed option is FORMERR
(`geodns.dns.wire` parses it).

The functions below are pure (secrets, bytes and the time in, bytes out);
`configure` sets the node's secrets for the data plane once at start (the
parent and each worker, from the node settings or a random secret).
"""

from __future__ import annotations

import secrets as _random
import socket
from dataclasses import dataclass

from siphashc import siphash

__all__ = [
    "CookieSecrets",
    "active",
    "answer_cookie",
    "configure",
    "echo_seconds_left",
    "packed_address",
    "parse_secret",
    "reply",
    "server_cookie",
    "valid_server_cookie",
]

VERSION = 1
MAX_AGE = 3600
"""Seconds a server cookie stays valid after its timestamp (RFC 9018 4.3: 1 hour)."""
MAX_AHEAD = 300
"""Seconds a server cookie's timestamp may be ahead of our clock (another node's clock)."""
REFRESH_AGE = 1800
"""A valid server cookie this old or older is answered with a fresh one."""

_HEAD = b"\x01\x00\x00\x00"  # version 1, reserved 0
_V4_MAPPED = bytes(10) + b"\xff\xff"


@dataclass(frozen=True, slots=True)
class CookieSecrets:
    """The node's SipHash keys (16 bytes each)."""

    current: bytes
    """Makes every server cookie we send, and validates."""
    previous: bytes | None = None
    """Still validates (during a rotation: every node gets the new secret, with the old one as
    previous, before the old one is dropped)."""
    origin: str = "random"
    """Where the secret came from, for the log line at start ('random', or the settings file)."""

    def __post_init__(self) -> None:
        if len(self.current) != 16 or (self.previous is not None and len(self.previous) != 16):
            raise ValueError("a cookie secret is 16 bytes (128 bits)")

    @classmethod
    def random(cls) -> CookieSecrets:
        return cls(_random.token_bytes(16))


def parse_secret(text: str) -> bytes:
    """32 hex digits (optionally `0x`-prefixed, as Knot writes them) -> the 16-byte secret."""
    text = text.strip()
    if text[:2].lower() == "0x":
        text = text[2:]
    if len(text) != 32:
        raise ValueError(f"expected 32 hex digits (a 128-bit secret), got {len(text)} characters")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("expected 32 hex digits (a 128-bit secret): not hexadecimal") from None


def server_cookie(secret: bytes, client_cookie: bytes, address: bytes, timestamp: int) -> bytes:
    """Our 16-byte server cookie for a client cookie from `address` (4 or 16 bytes) at `timestamp`."""
    head = _HEAD + (timestamp & 0xFFFFFFFF).to_bytes(4, "big")
    return head + siphash(secret, client_cookie + head + address).to_bytes(8, "little")


def reply(keys: CookieSecrets, option: bytes, address: bytes, now: int) -> tuple[bytes, bool]:
    """The COOKIE option data to answer `option` (8 or 16..40 bytes, as parsed) from `address`
    with at `now` (Unix seconds), and whether the query's server cookie was valid."""
    client = option[:8]
    if len(option) == 24 and option[8] == VERSION:
        age = (now - int.from_bytes(option[12:16], "big")) & 0xFFFFFFFF  # RFC 1982 serial arithmetic
        if age >= 0x80000000:
            age -= 1 << 32
        if -MAX_AHEAD <= age <= MAX_AGE:
            signed = option[:16] + address  # client cookie, version, reserved (as sent), timestamp
            mac = int.from_bytes(option[16:], "little")
            if siphash(keys.current, signed) == mac:
                if age < REFRESH_AGE:
                    return option, True
                return client + server_cookie(keys.current, client, address, now), True
            if keys.previous is not None and siphash(keys.previous, signed) == mac:
                return client + server_cookie(keys.current, client, address, now), True
    return client + server_cookie(keys.current, client, address, now), False


def echo_seconds_left(option: bytes, now: int) -> int:
    """For a valid server cookie `reply` echoed: seconds until it is due for renewal."""
    age = (now - int.from_bytes(option[12:16], "big")) & 0xFFFFFFFF
    if age >= 0x80000000:
        age -= 1 << 32
    return max(0, REFRESH_AGE - age)


def packed_address(host: str) -> bytes:
    """A client's address as the hash takes it: 4 bytes for IPv4 (also when it came IPv4-mapped
    on an IPv6 socket), 16 for IPv6."""
    if ":" not in host:
        return socket.inet_pton(socket.AF_INET, host)
    packed = socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0])
    return packed[12:] if packed[:12] == _V4_MAPPED else packed


_active = CookieSecrets.random()


def configure(keys: CookieSecrets) -> None:
    """Set the secrets this process answers with (at start: the parent, then each worker with the parent's)."""
    global _active
    _active = keys


def active() -> CookieSecrets:
    return _active


def answer_cookie(option: bytes, client: str, now: float) -> tuple[bytes, bool]:
    """`reply` with this process's secrets, the client's address and the answer path's `now`."""
    return reply(_active, option, packed_address(client), int(now))


def valid_server_cookie(data: bytes, client: str | bytes, now: float) -> bool:
    """Whether the query `data` from `client` (its address as text, or packed: 4 or 16 bytes,
    as a raw sockaddr holds it) carries a server cookie of ours valid at `now` (Unix seconds).

    For response rate limiting (a client that returns our cookie is not spoofed, so it
    is not limited): call it only for a response that would be limited; it parses the
    query again (the C scanner, ~0.3 us) and checks the hash (~0.2 us). A query without
    a COOKIE option costs the parse.
    """
    from geodns.dns.wire import parse_query

    try:
        query = parse_query(data)
    except Exception:  # noqa: BLE001 - junk carries no valid cookie
        return False
    edns = query.edns
    if edns is None or edns.cookie is None or len(edns.cookie) != 24:
        return False
    try:
        address = packed_address(client) if isinstance(client, str) else bytes(client)
        if len(address) == 16 and address[:12] == _V4_MAPPED:
            address = address[12:]
    except (OSError, ValueError):
        return False
    return reply(_active, edns.cookie, address, int(now))[1]
