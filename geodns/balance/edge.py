"""The client edge of the proxy: what a connection and a request must pass first.

aiohttp's server parses requests (llhttp, which refuses CL with TE, differing
or repeated Content-Length, obs-fold, bad field names and control characters);
this module adds what a proxy needs on top:

- `refusal()`, a pure check of a parsed request for what is legal HTTP but
  unsafe to forward: a `Connection` header naming a framing field (the attack
  that made a backend read a body as a second request), a transfer coding we
  cannot re-frame, CONNECT.
- `Edge` and `ClientConnection`: a cap on client connections per worker, and
  deadlines aiohttp does not have: the request head (slowloris) and a response
  the client will not take (slow reader). Both sweep once in a while instead of
  arming a timer per request.
- `ServerLog`: aiohttp's server logger, so that a malformed request is one
  line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from geodns.serverlog import ServerLog

log = logging.getLogger("geodns.balance")

FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "host"))
"""Fields that say where a message ends or whom it is for: never hop-by-hop, so a
`Connection` header that names one is an attack on the next hop's framing."""
HEAD_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
OVER_LIMIT_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def refusal(method: str, version: tuple[int, int], headers: Mapping[str, str]) -> tuple[int, str] | None:
    """(status, reason) when a parsed request must not be forwarded, else None.

    `headers` is aiohttp's CIMultiDictProxy (getall of every field line).
    """
    getall: Any = headers.getall  # type: ignore[attr-defined]
    for value in getall("Connection", ()):
        for token in value.split(","):
            name = token.strip(" \t").lower()
            if name in FRAMING_FIELDS:
                # RFC 9110 section 7.6.1 lets Connection name any field as hop-by-hop;
                # dropping Content-Length while forwarding the body smuggles it as a
                # second request, so we refuse instead (as HAProxy keeps them).
                return 400, f"Connection names {name}, a framing field"
    if len(getall("Host", ())) > 1:
        return 400, "more than one Host field"  # RFC 9112 section 3.2
    codings = getall("Transfer-Encoding", ())
    if codings:
        if version < (1, 1):
            return 400, "Transfer-Encoding in an HTTP/1.0 request"  # RFC 9112 section 6.1
        if ", ".join(codings).lower() != "chunked":
            return 501, "transfer coding other than chunked"  # RFC 9112 section 6.1
    if method == "CONNECT":
        return 405, "CONNECT is not proxied"
    return None


def default_max_clients() -> int:
    """Client connections per worker when the config sets none: half the open-file
    limit (each client may need a backend connection too), at most 10,000."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, (soft - 128) // 2))


class ClientConnection(asyncio.Protocol):
    """One client connection: aiohttp's request handler inside, our deadlines around it."""

    __slots__ = ("edge", "inner", "transport", "head_since", "write_since", "busy", "closing")

    def __init__(self, edge: Edge, inner: asyncio.Protocol) -> None:
        self.edge = edge
        self.inner: asyncio.Protocol | None = inner
        self.transport: asyncio.Transport | None = None
        self.head_since: float | None = None
        """Loop time the request head we wait for began (None: not waiting for one)."""
        self.write_since: float | None = None
        """Loop time since which our output has been stuck in the send buffer."""
        self.busy = 0
        """Requests of this connection in the proxy handler now."""
        self.closing = False
        """Answered with a refusal: what still arrives is dropped, not a new request head."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        edge = self.edge
        if len(edge.connections) >= edge.max_clients:
            edge.over_limit(self.transport)
            self.inner = None
            return
        edge.connections[transport] = self
        self.head_since = edge.loop.time()
        assert self.inner is not None
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            return
        if not self.busy and self.head_since is None and not self.closing:
            self.head_since = self.edge.loop.time()
        inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        inner = self.inner
        if inner is None:
            return
        self.edge.connections.pop(self.transport, None)  # type: ignore[arg-type]
        inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class Edge:
    """The client connections of one balancer process and their deadlines."""

    def __init__(self, max_clients: int, head_timeout: float, write_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_clients = max_clients
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.connections: dict[asyncio.BaseTransport, ClientConnection] = {}
        self.refused = 0
        """Connections refused over max_clients since the last log line about it."""
        self._last_refusal_log = -1e9
        self._sweeper: asyncio.Task[None] | None = None

    def server(self, handler: Any, **kwargs: Any) -> web.Server:
        """aiohttp's low-level server whose connections pass through this edge."""
        edge = self

        class Server(web.Server):
            def __call__(self) -> ClientConnection:
                return ClientConnection(edge, super().__call__())

        return Server(handler, logger=ServerLog(log), **kwargs)  # type: ignore[arg-type]

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def connection(self, transport: asyncio.BaseTransport | None) -> ClientConnection | None:
        return self.connections.get(transport) if transport is not None else None  # type: ignore[arg-type]

    def over_limit(self, transport: asyncio.Transport) -> None:
        transport.write(OVER_LIMIT_RESPONSE)
        transport.close()
        self.refused += 1
        now = self.loop.time()
        if now - self._last_refusal_log >= 1.0:  # one line a second, with the count
            log.warning("event=client_limit max_clients=%d refused=%d", self.max_clients, self.refused)
            self._last_refusal_log = now
            self.refused = 0

    async def _sweep(self) -> None:
        interval = min(1.0, self.head_timeout / 4, self.write_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """Close connections past their request-head or response-write deadline."""
        for conn in list(self.connections.values()):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            if conn.head_since is not None and now - conn.head_since > self.head_timeout:
                _close(transport, HEAD_TIMEOUT_RESPONSE, "request_head_timeout", self.head_timeout)
                continue
            if transport.get_write_buffer_size():
                if conn.write_since is None:
                    conn.write_since = now
                elif now - conn.write_since > self.write_timeout:
                    _close(transport, b"", "response_write_timeout", self.write_timeout)
            else:
                conn.write_since = None


def _close(transport: asyncio.Transport, last: bytes, event: str, timeout: float) -> None:
    """Say `last` and close; with nothing to say, abort (a client that reads
    nothing would keep a graceful close waiting on its send buffer forever)."""
    peer = transport.get_extra_info("peername")
    log.info("event=%s client=%s timeout=%s", event, peer[0] if peer else "-", timeout)
    if last:
        with contextlib.suppress(Exception):
            transport.write(last)
        transport.close()
    else:
        transport.abort()
