"""The tests' one DNS client: build a query, send it to a real server over UDP or TCP.

`query()` builds a dnspython message with the EDNS options the tests use (ECS, COOKIE, DO,
payload size); `ask()` sends it and returns the parsed response. `exchange()` sends bytes
exactly as given and returns the bytes that come back (or None), for tests that craft a
malformed or unusual packet on purpose (tests/integration/wirebuild.py builds those).

A server is anything with `host` and `port` attributes, or a `(host, port)` tuple.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

EXAMPLE = "gslb.example.test"
"""The bundled example zone (zones/example.yaml)."""
TIMEOUT = 3.0
COOKIE = 10
"""The COOKIE option code (RFC 7873)."""


def fqdn(label: str, zone: str = EXAMPLE) -> str:
    """`www` -> `www.gslb.example.test.`; `@` is the zone's apex."""
    return f"{label}.{zone}." if label != "@" else f"{zone}."


def query(
    name: str,
    qtype: str | int = "A",
    *,
    ecs: str | None = None,
    cookie: bytes | None = None,
    do: bool = False,
    edns: int | bool | None = None,
    payload: int = 1232,
    qid: int | None = None,
    rd: bool = False,
    options: tuple[dns.edns.Option, ...] = (),
) -> dns.message.QueryMessage:
    """A query for `name`/`qtype`, RD clear unless `rd`.

    `ecs` is a client subnet ("81.2.69.0/24"); `cookie` the COOKIE option's bytes, sent as
    given whatever their length (client cookie, then the server cookie if any). `edns=None`
    adds an OPT only when an option or DO asks for one; `False` never, `0` always.
    """
    opts = list(options)
    if ecs is not None:
        address, prefix = ecs.split("/")
        opts.append(dns.edns.ECSOption(address, int(prefix)))
    if cookie is not None:
        opts.append(dns.edns.GenericOption(COOKIE, cookie))
    use_edns = edns if edns is not None else (0 if (do or opts) else False)
    q = dns.message.make_query(
        name, qtype, use_edns=use_edns, payload=payload, want_dnssec=do, options=opts
    )
    if not rd:
        q.flags &= ~dns.flags.RD
    if qid is not None:
        q.id = qid
    return q


def _where(server: Any, host: str | None, port: int | None) -> tuple[str, int]:
    if isinstance(server, tuple):
        default_host, default_port = server
    else:
        default_host, default_port = server.host, server.port
    return host or default_host, port or default_port


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def ask(
    server: Any,
    name: str | dns.message.Message,
    qtype: str | int = "A",
    *,
    over: str = "udp",
    host: str | None = None,
    port: int | None = None,
    source: str | None = None,
    timeout: float = TIMEOUT,
    **build: Any,
) -> dns.message.Message:
    """Send a query (a name and `query()`'s keywords, or a built message) and return the response.

    dnspython checks that the response answers it (ID, question); `source` binds the client
    address (a loopback address other than 127.0.0.1, to test per-client behaviour).
    """
    q = name if isinstance(name, dns.message.Message) else query(name, qtype, **build)
    where, at = _where(server, host, port)
    send = dns.query.tcp if over == "tcp" else dns.query.udp
    return send(q, where, port=at, timeout=timeout, source=source)


def udp(server: Any, q: dns.message.Message, host: str | None = None, port: int | None = None) -> dns.message.Message:
    return ask(server, q, host=host, port=port)


def tcp(server: Any, q: dns.message.Message, host: str | None = None, port: int | None = None) -> dns.message.Message:
    return ask(server, q, over="tcp", host=host, port=port)


def exchange(
    server: Any,
    wire: bytes,
    *,
    over: str = "udp",
    host: str | None = None,
    port: int | None = None,
    source: str | None = None,
    timeout: float | None = None,
) -> bytes | None:
    """Send `wire` as it is (TCP: one length-prefixed message on a fresh connection) and return
    the response's bytes, or None when nothing comes back within `timeout` (UDP 1 s, TCP 2 s)."""
    where, at = _where(server, host, port)
    if over == "tcp":
        bind = (source, 0) if source else None
        with socket.create_connection((where, at), timeout=timeout or 2.0, source_address=bind) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            try:
                return read_framed(s)
            except (TimeoutError, ConnectionError):
                return None
    with socket.socket(family_of(where), socket.SOCK_DGRAM) as s:
        if source:
            s.bind((source, 0))
        s.settimeout(timeout or 1.0)
        s.sendto(wire, (where, at))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def raw_udp(server: Any, wire: bytes, timeout: float = 1.0, host: str | None = None) -> bytes | None:
    return exchange(server, wire, host=host, timeout=timeout)


def raw_tcp(server: Any, wire: bytes, timeout: float = 2.0) -> bytes | None:
    return exchange(server, wire, over="tcp", timeout=timeout)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_framed(sock: socket.socket) -> bytes:
    """One RFC 1035 4.2.2 length-prefixed message from a TCP socket."""
    (length,) = struct.unpack("!H", recv_exact(sock, 2))
    return recv_exact(sock, length)


def header(wire: bytes) -> tuple[int, int, int, int, int, int]:
    """(id, flags, qdcount, ancount, nscount, arcount)."""
    return struct.unpack_from("!HHHHHH", wire)


def addresses(msg: dns.message.Message, rdtype: str = "A") -> list[str]:
    """The answer's addresses of `rdtype`, sorted."""
    kind = dns.rdatatype.from_text(rdtype)
    return sorted(rd.address for rrset in msg.answer if rrset.rdtype == kind for rd in rrset)


def ecs_of(msg: dns.message.Message) -> dns.edns.ECSOption | None:
    return next((o for o in msg.options if isinstance(o, dns.edns.ECSOption)), None)


def cookie_of(msg: dns.message.Message) -> bytes | None:
    """The COOKIE option's bytes in a response, or None."""
    return next((o.to_wire() for o in msg.options if o.otype == COOKIE), None)
