"""The client edge of the proxy: what a connection and a request must pass first.

llhttp (through `proxy.ClientConnection`) parses requests and refuses CL with
TE, differing or repeated Content-Length, bad chunk sizes, obs-fold, bad field
names and control characters; this module adds what a proxy needs on top:

- `refusal()`, a pure check of a parsed request for what is legal HTTP but
  unsafe to forward: a `Connection` header naming a framing field (the attack
  that made a backend read a body as a second request), a transfer coding we
  cannot re-frame, CONNECT.
- `Edge`: a cap on client connections per worker, and their deadlines: the
  request head (slowloris), a response the client will not take (slow
  reader), keep-alive idle time. It sweeps once in a while instead of arming a
  timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geodns.balance.proxy import ClientConnection

log = logging.getLogger("geodns.balance")

FRAMING_FIELDS = frozenset(("content-length", "transfer-encoding", "host"))
"""Fields that say where a message ends or whom it is for: never hop-by-hop, so a
`Connection` header that names one is an attack on the next hop's framing."""
HEAD_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
OVER_LIMIT_RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


def refusal(method: str, version: tuple[int, int], headers: Any) -> tuple[int, str] | None:
    """(status, reason) when a parsed request must not be forwarded, else None.

    `headers` has `getall(name, default)`, every value of a field (any case) as
    text: the proxy's `Fields`, or a multidict.
    """
    getall = headers.getall
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


class Edge:
    """The client connections of one balancer process and their deadlines."""

    def __init__(self, max_clients: int, head_timeout: float, write_timeout: float, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_clients = max_clients
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[ClientConnection] = set()
        self.refused = 0
        """Connections refused over max_clients since the last log line about it."""
        self._last_refusal_log = -1e9
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

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
        while True:
            await asyncio.sleep(min(1.0, self.head_timeout / 4, self.write_timeout / 4))
            self.sweep(self.loop.time())

    def sweep(self, now: float) -> None:
        """Close connections past their request-head, response-write or idle deadline."""
        for conn in list(self.connections):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            if conn.head_since is not None and now - conn.head_since > self.head_timeout:
                conn.broken = True
                _close(transport, HEAD_TIMEOUT_RESPONSE, "request_head_timeout", self.head_timeout)
                continue
            if conn.idle_since is not None and now - conn.idle_since > self.idle_timeout:
                transport.close()  # keep-alive ends quietly, as every server's does
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
