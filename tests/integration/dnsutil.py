"""Small DNS client helpers over real sockets: dnspython messages and raw bytes."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

ZONE = "gslb.example.test"
TIMEOUT = 3.0


def fqdn(label: str) -> str:
    return f"{label}.{ZONE}." if label != "@" else f"{ZONE}."


def make(
    name: str,
    rdtype: str | int = "A",
    *,
    edns: int | None = None,
    payload: int = 1232,
    do: bool = False,
    subnet: str | None = None,
    qid: int | None = None,
) -> dns.message.QueryMessage:
    """A query; `edns=None` sends no OPT unless do/subnet ask for it."""
    options = []
    if subnet is not None:
        address, prefix = subnet.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    use_edns = edns if edns is not None else (0 if (do or options) else False)
    q = dns.message.make_query(
        name, rdtype, use_edns=use_edns, payload=payload, want_dnssec=do, options=options
    )
    q.flags &= ~dns.flags.RD
    if qid is not None:
        q.id = qid
    return q


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp(
    server, query: dns.message.Message, host: str | None = None, port: int | None = None
) -> dns.message.Message:
    return dns.query.udp(query, host or server.host, port=port or server.port, timeout=TIMEOUT)


def tcp(
    server, query: dns.message.Message, host: str | None = None, port: int | None = None
) -> dns.message.Message:
    return dns.query.tcp(query, host or server.host, port=port or server.port, timeout=TIMEOUT)


def ask(
    server, name: str, rdtype: str | int = "A", *, over: str = "udp", **kwargs
) -> dns.message.Message:
    query = make(name, rdtype, **kwargs)
    return (tcp if over == "tcp" else udp)(server, query)


def raw_udp(server, wire: bytes, timeout: float = 1.0, host: str | None = None) -> bytes | None:
    """Send bytes, return the response bytes, or None when nothing comes back within `timeout`."""
    host = host or server.host
    with socket.socket(family_of(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, (host, server.port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_framed(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, length)


def raw_tcp(server, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """One length-prefixed message over a fresh connection; None when the server sends nothing."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        try:
            return read_framed(s)
        except (TimeoutError, ConnectionError):
            return None


def header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    """(id, flags, qdcount, ancount, nscount, arcount)."""
    return struct.unpack_from("!HHHHHH", wire)


def rcode_of(msg: dns.message.Message) -> int:
    return msg.rcode()


def addresses(msg: dns.message.Message, rdtype: str = "A") -> list[str]:
    kind = dns.rdatatype.from_text(rdtype)
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype == kind for rd in rrset)


def ecs_of(msg: dns.message.Message) -> dns.edns.ECSOption | None:
    return next((o for o in msg.options if isinstance(o, dns.edns.ECSOption)), None)
