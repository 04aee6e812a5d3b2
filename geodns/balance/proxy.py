"""The proxy's data path: client connections, requests forwarded, responses written back.

A client connection is an asyncio Protocol whose bytes go to llhttp (httptools, as
uvicorn uses it). llhttp owns the framing rules: it refuses with an error a
Content-Length with Transfer-Encoding, repeated or malformed Content-Length,
chunk sizes that are not hex digits, obs-fold, bad field names, control
characters and bare LF. This module adds what a proxy needs on top
(`edge.refusal()` of requests that are legal but unsafe to forward, size
limits on the head, deadlines), forwards each request through
`upstream.Client`, and writes the response itself: status line and fields in
one write, the body whole or streamed (Content-Length, or chunked to an
HTTP/1.1 client, or to the close).

Requests on one connection are answered in order: a request whose head arrives
while another is being answered waits in `pipeline` (and the socket stops being
read until it is its turn). A WebSocket upgrade becomes a byte tunnel to the
backend once the backend has answered 101, as HAProxy and nginx do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from geodns.balance import sticky
from geodns.balance.edge import refusal
from geodns.balance.pool import Backend, Pool, Route
from geodns.balance.upstream import (
    BadResponse,
    ConnectFailed,
    Disconnected,
    Head,
    ReadTimeout,
    Response,
    UpstreamError,
    next_head,
    parse_head,
)
from geodns.balance.upstream import Connection as UpstreamConnection
from geodns.balance.upstream import Pool as UpstreamPool

if TYPE_CHECKING:
    from geodns.balance.server import Balancer

log = logging.getLogger("geodns.balance")

# RFC 9110 section 7.6.1: connection-specific fields never cross a proxy.
HOP_BY_HOP = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    )
)
HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {"content-length"}
RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP)
RESPONSE_DROP_AND_LENGTH = RESPONSE_DROP | {b"content-length"}
"""Response fields never passed on (as the backend's bytes): hop-by-hop, and Content-Length
when we state the framing ourselves."""
# What never goes upstream as the client sent it: hop-by-hop fields, the
# forwarding fields this hop restates, and Content-Length: the body's framing
# is ours to state from what we actually send.
UPSTREAM_SKIP = frozenset(
    name.encode() for name in HOP_BY_HOP | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via",
                                            "content-length"}
)
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
SMALL_BODY = 64 * 1024
"""Bodies of known length up to this are read whole and written with their head in one
write; larger or unknown-length bodies are streamed chunk by chunk."""
MAX_FIELD = 8190
"""Longest request target or field line, as aiohttp and nginx's 8 KiB header buffers."""
MAX_HEAD = 64 * 1024
"""Longest request head. llhttp sets no limit of its own."""
MAX_FIELDS = 100
"""Most field lines in a request head (HAProxy's tune.http.maxhdr is 101)."""
BODY_HIGH_WATER = 256 * 1024
"""Request body bytes buffered before the socket stops being read until they are sent on."""
LINGERING_TIME = 2.0
"""Seconds a connection closed with a request body unread keeps reading (and dropping)
it, so that the client sees our answer rather than a reset (aiohttp's default is 10)."""
REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           414: "URI Too Long", 431: "Request Header Fields Too Large", 501: "Not Implemented",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientFailed(Exception):
    """The client, not the backend, failed while sending its body: gone, or too slow."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class TooLarge(Exception):
    """A request head past MAX_FIELD or MAX_HEAD (raised inside a parser callback)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _log(event: str, **fields: object) -> None:
    log.info(" ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())]))


class Fields:
    """A request's field lines as received (bytes), with an index by lower-case name."""

    __slots__ = ("lines", "index")

    def __init__(self) -> None:
        self.lines: list[tuple[bytes, bytes]] = []
        self.index: dict[bytes, list[bytes]] = {}

    def add(self, name: bytes, value: bytes) -> None:
        self.lines.append((name, value))
        key = name.lower()
        seen = self.index.get(key)
        if seen is None:
            self.index[key] = [value]
        else:
            seen.append(value)

    def get(self, name: bytes) -> bytes | None:
        """The first value of the lower-case field `name`."""
        values = self.index.get(name)
        return values[0] if values else None

    def getall(self, name: str, default: tuple[()] = ()) -> list[str]:
        """Every value of `name` (any case), as text; what `edge.refusal()` reads."""
        return [v.decode("latin-1") for v in self.index.get(name.lower().encode("latin-1"), default)]


def cookie(fields: Fields, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie fields (RFC 6265 section 5.4)."""
    values = fields.index.get(b"cookie")
    if not values:
        return None
    want = name.encode("latin-1")
    for value in values:
        for pair in value.split(b";"):
            key, eq, val = pair.strip(b" \t").partition(b"=")
            if eq and key == want:
                val = val.strip(b" \t")
                if len(val) >= 2 and val[:1] == b'"' == val[-1:]:
                    val = val[1:-1]
                return val.decode("latin-1")
    return None


class Body:
    """A request body as llhttp delivers it, read by the request's handler."""

    __slots__ = ("conn", "chunks", "buffered", "done", "error", "waiter", "started")

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.done = False
        self.error: str | None = None
        """Why the body cannot be trusted (llhttp refused what followed the head)."""
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        """A byte of it has been handed to a backend: the request cannot be sent elsewhere."""

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > BODY_HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, reason: str) -> None:
        self.error = reason
        self._wake()

    async def read(self, deadline: float) -> bytes:
        """The next piece of the body (b"" at its end), by `deadline` (loop time)."""
        while not self.chunks:
            if self.error is not None:
                raise ClientFailed(400, f"request body: {self.error}")
            if self.done:
                return b""
            if self.conn.lost:
                raise ClientFailed(400, "request body: the client closed the connection")
            self.conn.resume_reading()
            self.waiter = self.conn.loop.create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await self.waiter
            except TimeoutError:
                raise ClientFailed(408, "request body timeout") from None
            finally:
                self.waiter = None
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self.error is not None:
            raise ClientFailed(400, f"request body: {self.error}")
        return data

    async def read_all(self, deadline: float) -> bytes:
        parts = []
        while data := await self.read(deadline):
            parts.append(data)
        return b"".join(parts)

    async def stream(self, deadline: float) -> AsyncIterator[bytes]:
        self.started = True
        while data := await self.read(deadline):
            yield data


class Request:
    """One parsed request head and its body."""

    __slots__ = ("method", "target", "version", "fields", "keep_alive", "upgrade", "body", "started")

    def __init__(self, method: bytes, target: bytes, version: tuple[int, int], fields: Fields,
                 keep_alive: bool, upgrade: bool, body: Body) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.fields = fields
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body = body
        self.started = time.monotonic()

    @property
    def path(self) -> str:
        target = self.target
        if not target.startswith(b"/"):  # absolute-form (RFC 9112 section 3.2.2) or `*`
            scheme, sep, rest = target.partition(b"://")
            target = b"/" + rest.partition(b"/")[2] if sep else b"/"
        path = target.partition(b"?")[0].decode("utf-8", "surrogateescape")
        return unquote(path) if "%" in path else path


class ClientConnection(asyncio.Protocol):
    """One client connection: llhttp's parser, the requests in order, our deadlines."""

    __slots__ = (
        "proxy", "edge", "loop", "parser", "transport", "remote", "head_since", "idle_since", "write_since",
        "closing", "broken", "lost", "current", "parsing", "pipeline", "error", "in_head", "head_bytes",
        "target", "fields", "tunnel", "early", "reading", "write_waiter", "half_closed", "to_start",
        "head_size",
    )

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.edge = proxy.balancer.edge
        self.loop = proxy.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.remote = "-"
        self.head_since: float | None = None
        """Loop time the request head we wait for began (None: not waiting for one)."""
        self.idle_since: float | None = None
        """Loop time since which the connection has been idle between requests."""
        self.write_since: float | None = None
        """Loop time since which our output has been stuck in the send buffer."""
        self.closing = False
        """Close once the current response is written (a refusal, or shutdown)."""
        self.broken = False
        """llhttp refused the input, or it belongs to another protocol now: nothing more is parsed."""
        self.half_closed = False
        """The client sent its end of the stream: answer what it asked, then close."""
        self.lost = False
        self.current: Request | None = None
        """The request being answered."""
        self.parsing: Request | None = None
        """The request whose body llhttp is reading."""
        self.pipeline: deque[Request] = deque()
        self.error: tuple[int, str] | None = None
        """A refused head, answered once the requests before it are."""
        self.in_head = False
        self.head_bytes = 0
        """Bytes received while a head is incomplete (bounds what llhttp accumulates)."""
        self.head_size = 0
        """Bytes of the target and field lines of the head being parsed."""
        self.target = b""
        self.fields = Fields()
        self.tunnel: Tunnel | None = None
        self.early = b""
        """Bytes after an upgrade request's head, for the backend once the tunnel is up."""
        self.reading = True
        self.write_waiter: asyncio.Future[None] | None = None
        self.to_start: Request | None = None
        """A request whose head this feed completed: dispatched once the feed is parsed,
        so that a body that came with its head is already there."""

    # ---- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        edge = self.edge
        if len(edge.connections) >= edge.max_clients:
            edge.over_limit(self.transport)
            self.broken = self.lost = True
            return
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote = peer[0]
        edge.connections.add(self)
        self.head_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.send(data)
            return
        if self.broken:
            return
        if self.current is None and self.head_since is None and not self.closing:
            self.head_since = self.loop.time()
            self.idle_since = None
        if self.in_head or self.parsing is None:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.early = data[exc.args[0]:]
            self.broken = True  # what follows is the upgraded protocol's, not HTTP/1.1
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, TooLarge):
                raise
            self.refused(cause.status, str(cause))
        except httptools.HttpParserError as exc:
            self.refused(400, str(exc) or type(exc).__name__)
        else:
            if self.in_head and self.head_bytes > MAX_HEAD:
                self.refused(431, "request head too large")
        finally:
            req = self.to_start
            if req is not None:
                self.to_start = None
                self.proxy.dispatch(self, req)

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            self.tunnel.ended(from_client=True)
            return True
        if self.parsing is not None:
            self.parsing.body.fail("the client closed the connection")
        if self.current is not None or self.pipeline:
            # Half-closed after its requests (`nc`, HTTP/1.0 clients): answer them, then close.
            self.half_closed = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.edge.connections.discard(self)
        for req in (self.parsing, self.current):
            if req is not None and not req.body.done:
                req.body.fail("the client closed the connection")
        if self.tunnel is not None:
            self.tunnel.close()
        w = self.write_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_waiter = self.loop.create_future()
        if self.tunnel is not None and self.tunnel.transport is not None:
            self.tunnel.transport.pause_reading()

    def resume_writing(self) -> None:
        w = self.write_waiter
        self.write_waiter = None
        if w is not None and not w.done():
            w.set_result(None)
        if self.tunnel is not None and self.tunnel.transport is not None:
            self.tunnel.transport.resume_reading()

    # ---- llhttp callbacks

    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_size = 0
        self.target = b""
        self.fields = Fields()

    def on_url(self, url: bytes) -> None:
        self.target += url
        if len(self.target) > MAX_FIELD:
            raise TooLarge(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        if size > MAX_FIELD:
            raise TooLarge(431, f"field line {name[:40]!r} too long")
        self.head_size += size + 4
        if self.head_size > MAX_HEAD or len(self.fields.lines) >= MAX_FIELDS:
            raise TooLarge(431, f"request head over {MAX_HEAD} bytes or {MAX_FIELDS} fields")
        self.fields.add(name, value)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.head_bytes = 0
        self.head_since = None
        p = self.parser
        version = (1, 1) if p.get_http_version() == "1.1" else (1, 0)
        req = Request(p.get_method(), self.target, version, self.fields, p.should_keep_alive(),
                      p.should_upgrade(), Body(self))
        self.parsing = req
        if self.current is None:
            self.current = self.to_start = req
        else:
            self.pipeline.append(req)
            self.pause_reading()

    def on_body(self, data: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body.feed(data)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.body.finish()
            self.parsing = None

    # ---- requests

    def _next(self, req: Request) -> None:
        """The next pipelined request, already `current` (from the loop, not from inside
        the previous answer, so that a long pipeline does not nest)."""
        if not self.lost:
            self.proxy.dispatch(self, req)

    def finished(self, req: Request) -> None:
        """The response to `req` is written: the next request, or idle, or close."""
        self.current = None
        transport = self.transport
        if self.lost or transport is None or transport.is_closing() or self.tunnel is not None:
            return
        if self.closing or not req.keep_alive or not req.body.done:
            self.close(req)
            return
        if self.pipeline:
            self.current = req = self.pipeline.popleft()
            self.loop.call_soon(self._next, req)
            if not self.pipeline:
                self.resume_reading()
            return
        if self.error is not None:
            self.refused(*self.error)
            return
        if self.broken or self.half_closed:
            self.close()
            return
        self.idle_since = self.loop.time()
        self.resume_reading()

    def close(self, req: Request | None = None) -> None:
        """Close after what is written; with a request body still arriving, read and drop it
        for a while first, so that a reset does not destroy the response on its way."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if req is not None and not req.body.done and req.body.error is None and not self.lost:
            self.broken = True
            self.resume_reading()
            self.loop.call_later(LINGERING_TIME, transport.close)
            if transport.can_write_eof():
                transport.write_eof()
            return
        transport.close()

    def refused(self, status: int, reason: str) -> None:
        """llhttp (or a size limit) refused the input at this point."""
        self.broken = True
        if self.parsing is not None:
            # Its head was complete and its handler will answer; one log line, from it.
            self.parsing.body.fail(reason)
            self.parsing = None
            return
        if self.current is not None or self.pipeline:
            self.error = (status, reason)
            return
        self.error = None
        _log("bad_request", client=self.remote, status=status, error=repr(reason))
        self.write_simple(status, reason, close=True)
        self.close()

    def write_simple(self, status: int, text: str, close: bool, version: tuple[int, int] = (1, 1)) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = f"{status} {text}\n".encode("utf-8", "replace")
        transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, REASONS.get(status, "Error").encode(), len(body),
               b"Connection: close\r\n" if close else (b"Connection: keep-alive\r\n" if version < (1, 1) else b""),
               body)
        )

    def pause_reading(self) -> None:
        if self.reading and self.transport is not None and not self.lost:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.reading and self.transport is not None and not self.lost:
            self.reading = True
            self.transport.resume_reading()

    async def drain(self, deadline: float) -> None:
        """Until the client has taken our output below the high-water mark, by `deadline`."""
        w = self.write_waiter
        if w is None:
            return
        try:
            async with asyncio.timeout_at(deadline):
                await w
        except TimeoutError:
            raise ClientFailed(408, "response body timeout: the client is not reading") from None
        if self.lost:
            raise ClientFailed(400, "the client closed the connection")


class Tunnel(asyncio.Protocol):
    """The backend side of an upgraded connection: its response head, then bytes both ways."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.eofs = 0
        """Directions that have ended: at two, both connections close."""

    def send(self, data: bytes) -> None:
        """Bytes from the client, to the backend."""
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        for transport in (self.transport, self.client.transport if self.client is not None else None):
            if transport is not None:
                transport.close()

    def ended(self, from_client: bool) -> None:
        """One side sent its end of stream: pass it on; when both have, close both."""
        self.eofs += 1
        if self.eofs >= 2:
            self.close()
            return
        other = self.transport if from_client else (self.client.transport if self.client is not None else None)
        if other is not None and other.can_write_eof():
            other.write_eof()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
            return
        self.buffer += data
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool | None:
        if self.client is None:
            return None
        self.ended(from_client=False)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.close()

    def pause_writing(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.resume_reading()

    async def head(self, timeout: float) -> bytes:
        """The backend's response head (without its blank line); the rest stays in `buffer`."""
        async with asyncio.timeout(timeout):
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if self.closed.done() or len(self.buffer) > MAX_HEAD:
                    raise UpstreamError("no response head from the backend")
                self.waiter = self.loop.create_future()
                await self.waiter
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head


def _has_body(fields: Fields) -> bool:
    """The request has a body to forward (chunked, or a Content-Length above 0)."""
    if b"transfer-encoding" in fields.index:
        return True
    length = fields.get(b"content-length")
    return length is not None and length.strip(b"0") != b""


class Exchange:
    """A bodiless request on the fast path: written on a pooled backend connection and
    answered from that connection's data callback, with no task, future or coroutine.
    Anything off the common case leaves it: a response to stream goes to a task
    (`Proxy._exchange_handoff`), a failure to `Proxy._forward`'s retry rules."""

    __slots__ = ("proxy", "conn", "req", "route", "backend", "upstream", "cookie_key", "head",
                 "progress", "done")

    def __init__(self, proxy: Proxy, conn: ClientConnection, req: Request, route: Route, backend: Backend,
                 upstream: UpstreamConnection, cookie_key: str | None) -> None:
        self.proxy = proxy
        self.conn = conn
        self.req = req
        self.route = route
        self.backend = backend
        self.upstream = upstream
        self.cookie_key = cookie_key
        self.head: Head | None = None
        self.progress = False
        """Bytes arrived since the read deadline was set (`Proxy.sweep_reads`)."""
        self.done = False

    def on_data(self) -> None:
        self.progress = True
        self.proxy._exchange_data(self)

    def on_lost(self) -> None:
        self.proxy._exchange_failed(self, Disconnected("backend closed the connection"))

    def expire(self) -> None:
        """The read deadline passed with no byte from the backend since it was set."""
        if not self.done:
            self.proxy._exchange_failed(self, ReadTimeout("backend read timeout"))

    def cancel(self) -> None:
        """What `Backend.tasks` members do when a removed backend's drain times out."""
        self.proxy._exchange_cancelled(self)

    def end(self, close: bool = True, give: bool = True) -> None:
        """Detach from the backend connection (closed unless `close` is False)."""
        self.done = True
        self.upstream.exchange = None
        self.proxy.waiting.pop(self, None)
        if close:
            self.upstream.close()
        if give:
            self.backend.give(self)  # type: ignore[arg-type]


class Proxy:
    """The forwarding rules of one balancer process (its routes, choosers, backends)."""

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.loop = asyncio.get_running_loop()
        self._vias: dict[tuple[int, int], bytes] = {}
        self.waiting: dict[Exchange, float] = {}
        """Fast-path exchanges waiting on their backend -> when their read deadline was set
        (loop time). One sweep checks them all: a timer armed and cancelled per request
        cost 5% of a request's CPU (py-spy, one worker under wrk)."""
        self._sweeper: asyncio.Task[None] | None = None

    def connection(self) -> ClientConnection:
        return ClientConnection(self)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    def _wait_for(self, ex: Exchange) -> None:
        """Set `ex`'s read deadline; the sweeper runs while any exchange waits."""
        self.waiting[ex] = self.loop.time()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self.loop.create_task(self._sweep_reads())

    async def _sweep_reads(self) -> None:
        while self.waiting:
            timeout = self.balancer.upstream.read_timeout if self.balancer.upstream is not None else None
            await asyncio.sleep(min(1.0, timeout / 4) if timeout else 1.0)
            self.sweep_reads(self.loop.time(), timeout)

    def sweep_reads(self, now: float, timeout: float | None) -> None:
        """Fail the exchanges whose backend sent nothing for `timeout` seconds; one that
        sent bytes since gets a new deadline (a slow body is not a dead backend)."""
        if not timeout:
            return
        for ex, since in list(self.waiting.items()):
            if now - since < timeout:
                continue
            if ex.progress:
                ex.progress = False
                self.waiting[ex] = now
            else:
                del self.waiting[ex]
                ex.expire()

    def reset(self) -> None:
        """The configuration changed."""
        self._vias = {}

    def _via(self, version: tuple[int, int]) -> bytes:
        """`1.1 geodns`, built once per protocol version."""
        via = self._vias.get(version)
        if via is None:
            via = self._vias[version] = f"{version[0]}.{version[1]} {self.balancer.config.via}".encode()
        return via

    # ---- a request

    def dispatch(self, conn: ClientConnection, req: Request) -> None:
        """Answer `req`: at once when it is refused or has no route; on the fast path
        (`Exchange`) when it has no body and a pooled backend connection is ready;
        else in a task."""
        b = self.balancer
        b.rate.add(req.started)
        body = req.body
        if body.error is not None:
            self.refuse(conn, req, 400, body.error)
            conn.finished(req)
            return
        index = req.fields.index
        if (b"connection" in index or b"transfer-encoding" in index or len(index.get(b"host", ())) > 1
                or req.method == b"CONNECT"):
            # Only a request with one of these can be refused: the rest skip the check.
            refused = refusal(req.method.decode("latin-1"), req.version, req.fields)
            if refused is not None:
                self.refuse(conn, req, *refused)
                conn.finished(req)
                return
        routes = b.routes
        route = routes.catch_all
        if route is None:
            host = req.fields.get(b"host")
            route = routes.match(host.decode("latin-1") if host else "", req.path)
        if route is None:
            conn.write_simple(404, "no route", self._closes(conn, req), req.version)
            conn.finished(req)
            return
        b.active_requests += 1
        if req.upgrade:
            upgrade = req.fields.get(b"upgrade")
            if upgrade is not None and upgrade.lower() == b"websocket":
                self._spawn(conn, req, self._websocket(conn, req, route))
                return
        if body.done and not body.chunks and not _has_body(req.fields):
            self._fast(conn, req, route)
        else:
            self._spawn(conn, req, self._forward(conn, req, route))

    def _spawn(self, conn: ClientConnection, req: Request, work: Coroutine[Any, Any, None]) -> None:
        self.loop.create_task(self._run(conn, req, work))

    async def _run(self, conn: ClientConnection, req: Request, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            # A removed backend's drain timed out: cut the client's connection.
            if conn.transport is not None:
                conn.transport.close()
            conn.lost = True
            raise
        except Exception:
            log.exception("event=proxy_error client=%s", conn.remote)
            if conn.transport is not None:
                conn.transport.abort()
        finally:
            self._done(conn, req)

    def _done(self, conn: ClientConnection, req: Request) -> None:
        self.balancer.active_requests -= 1
        conn.finished(req)

    # ---- the fast path: a bodiless request on a pooled connection, no task

    def _fast(self, conn: ClientConnection, req: Request, route: Route) -> None:
        b = self.balancer
        pool = route.pool
        now = req.started
        pinned, cookie_key = self._pinned(req, pool, now)
        backend = pinned or route.chooser.choose(pool.available(now), self._hash_key(conn, req, route))
        if backend is None:
            self._fail(conn, req, route, 503, "no backend available", [])
            self._done(conn, req)
            return
        upstream = b.upstream
        assert upstream is not None
        up = upstream.idle_connection(backend.host, backend.port)
        if up is None or up.transport is None:
            self._spawn(conn, req, self._forward(conn, req, route, (backend, cookie_key)))
            return
        framing = b"Content-Length: 0\r\n" if b"content-length" in req.fields.index else b""
        head, has_host = self._request_head(conn, req, framing)
        ex = Exchange(self, conn, req, route, backend, up, cookie_key)
        up.exchange = ex
        backend.in_flight += 1
        backend.tasks.add(ex)  # type: ignore[arg-type]  # cancelled like a task if a drain times out
        up.transport.write(head + b"\r\n" if has_host else head + backend.host_line + b"\r\n")
        if upstream.read_timeout:
            self._wait_for(ex)

    def _exchange_data(self, ex: Exchange) -> None:
        """Bytes arrived for `ex`: answer the client when its response is whole."""
        up = ex.upstream
        buf = up.buffer
        try:
            head = ex.head
            if head is None:
                head = next_head(buf, ex.req.method == b"HEAD")
                if head is None:
                    return
                ex.head = head
                if head.length is None or head.length > SMALL_BODY:
                    self._exchange_handoff(ex, head)
                    return
        except BadResponse as exc:
            self._exchange_failed(ex, exc)
            return
        length = head.length or 0
        if len(buf) < length:
            return
        data = bytes(buf[:length])
        del buf[:length]
        ex.end(close=False)
        self.balancer.upstream.release((ex.backend.host, ex.backend.port), up, head.keep_alive)  # type: ignore[union-attr]
        self._write_whole(ex.conn, ex.req, ex.route, ex.backend, head, data, ex.cookie_key)
        self._done(ex.conn, ex.req)

    def _exchange_handoff(self, ex: Exchange, head: Head) -> None:
        """A response to stream (large, chunked, to the close): a task takes it over."""
        ex.end(close=False, give=False)
        ex.backend.tasks.discard(ex)  # type: ignore[arg-type]
        upstream = self.balancer.upstream
        assert upstream is not None
        resp = Response(ex.upstream, UpstreamPool(upstream, (ex.backend.host, ex.backend.port)), upstream.read_timeout)
        resp.start(head)
        self._spawn(ex.conn, ex.req, self._respond_taken(ex, resp))

    async def _respond_taken(self, ex: Exchange, resp: Response) -> None:
        backend = ex.backend
        task = asyncio.current_task()
        backend.tasks.add(task)  # type: ignore[arg-type]
        try:
            await self._respond(ex.conn, ex.req, ex.route, backend, resp, ex.cookie_key)
        finally:
            backend.give(task)

    def _exchange_failed(self, ex: Exchange, exc: UpstreamError) -> None:
        """No whole response from the backend: retried (if the request may be) in a task."""
        if ex.done:
            return
        ex.end()
        self._spawn(ex.conn, ex.req, self._forward(ex.conn, ex.req, ex.route, (ex.backend, ex.cookie_key), exc))

    def _exchange_cancelled(self, ex: Exchange) -> None:
        """A removed backend's drain timed out: cut the client's connection."""
        if ex.done:
            return
        ex.end()
        conn = ex.conn
        if conn.transport is not None:
            conn.transport.close()
        conn.lost = True
        self._done(conn, ex.req)

    def _closes(self, conn: ClientConnection, req: Request) -> bool:
        """The connection closes after this response."""
        return (conn.closing or not req.keep_alive or not req.body.done or self.balancer.closing
                or (conn.half_closed or conn.broken) and not conn.pipeline)

    def refuse(self, conn: ClientConnection, req: Request, status: int, reason: str) -> None:
        """A request we will not forward: one log line, the status, and the connection closed
        (what follows on it cannot be trusted to be framed as the client meant)."""
        _log("bad_request", client=conn.remote, status=status, method=req.method.decode("latin-1"),
             error=repr(reason))
        conn.closing = True
        if conn.transport is not None and not conn.transport.is_closing():
            conn.write_simple(status, reason, True)

    def _hash_key(self, conn: ClientConnection, req: Request, route: Route) -> str | None:
        if route.algorithm == "ip_hash":
            return conn.remote
        if route.algorithm != "consistent_hash":
            return None
        hk = route.pool.config.hash_key
        if hk.source == "header" and hk.name:
            value = req.fields.get(hk.name.lower().encode("latin-1"))
            return value.decode("latin-1") if value else conn.remote
        if hk.source == "cookie" and hk.name:
            return cookie(req.fields, hk.name) or conn.remote
        return conn.remote

    def _pinned(self, req: Request, pool: Pool, now: float) -> tuple[Backend | None, str | None]:
        cfg = pool.config.sticky
        if cfg is None:
            return None, None
        key = sticky.verify(self.balancer.secret, pool.name, cookie(req.fields, cfg.cookie))
        if key is None:
            return None, None
        backend = pool.by_key.get(key)
        if backend is not None and backend.available(now):
            return backend, key
        return None, key

    def _upstream_fields(self, conn: ClientConnection, req: Request) -> list[bytes]:
        """The request's field lines for the backend, each ending in CRLF."""
        fields = req.fields
        drop = UPSTREAM_SKIP
        for value in fields.index.get(b"connection", ()):
            drop = drop | {t.strip(b" \t").lower() for t in value.split(b",")}
        out = [name + b": " + value + b"\r\n" for name, value in fields.lines if name.lower() not in drop]
        remote = conn.remote.encode()
        prior = fields.index.get(b"x-forwarded-for")
        out.append(b"X-Forwarded-For: " + (b", ".join([*prior, remote]) if prior else remote) + b"\r\n")
        # Proto and Host are ours to state (a client could forge them); the
        # address chain is appended to, as nginx's $proxy_add_x_forwarded_for does.
        out.append(b"X-Forwarded-Proto: http\r\n")
        host = fields.get(b"host")
        if host is not None:
            out.append(b"X-Forwarded-Host: " + host + b"\r\n")
        via = self._via(req.version)
        prior_via = fields.get(b"via")
        out.append(b"Via: " + (prior_via + b", " + via if prior_via else via) + b"\r\n")
        return out

    def _request_head(self, conn: ClientConnection, req: Request, framing: bytes) -> tuple[bytes, bool]:
        """The request line and fields for a backend, without the closing blank line, and
        whether they name a Host (else the backend's own goes in)."""
        lines = self._upstream_fields(conn, req)
        lines.append(framing)
        return req.method + b" " + req.target + b" HTTP/1.1\r\n" + b"".join(lines), b"host" in req.fields.index

    def _failure(self, backend: Backend, exc: Exception, repeatable: bool, body_started: bool) -> tuple[int, str, bool]:
        """(status, reason, try another backend) after `exc` on the way to `backend`."""
        self.balancer.failed(backend)
        if isinstance(exc, ConnectFailed):
            # Never reached the backend: safe to send elsewhere, even a POST,
            # as long as no byte of its body was consumed.
            return 502, f"connect: {exc}", not body_started
        # May have reached the backend: only idempotent, bodiless requests go again.
        timed_out = isinstance(exc, ReadTimeout)
        return (504 if timed_out else 502), f"{type(exc).__name__}: {exc}", repeatable

    def _fail(self, conn: ClientConnection, req: Request, route: Route, status: int, last: str,
              tried: list[str]) -> None:
        """No backend answered: one log line, and the status to the client."""
        self.balancer.metrics.observe(route.label, "-", status, time.monotonic() - req.started)
        _log("proxy_failed", route=route.label, method=req.method.decode("latin-1"), tried=",".join(tried) or "-",
             status=status, error=repr(last))
        if conn.transport is not None and not conn.transport.is_closing():
            conn.write_simple(status, last, self._closes(conn, req), req.version)

    async def _forward(self, conn: ClientConnection, req: Request, route: Route,
                       pick: tuple[Backend, str | None] | None = None, failed: Exception | None = None) -> None:
        """Send `req` to a backend, trying others as the retry rules allow, and answer.

        `pick`: the backend the fast path chose (and the sticky cookie's backend);
        `failed`: what went wrong when the fast path sent it there."""
        b = self.balancer
        upstream = b.upstream
        assert upstream is not None
        pool = route.pool
        fields = req.fields
        method = req.method
        length_field = fields.get(b"content-length")
        length = int(length_field) if length_field is not None else None  # llhttp checked its digits
        has_body = _has_body(fields)
        body: bytes | AsyncIterator[bytes] | None = None
        chunked = False
        framing = b""
        if has_body:
            deadline = self.loop.time() + b.config.timeouts.request_body
            expect = fields.get(b"expect")
            if expect is not None and expect.lower() == b"100-continue" and conn.transport is not None:
                conn.transport.write(CONTINUE)
            if length is not None and length <= SMALL_BODY:
                # Whole: one write, replayable after a connect failure, and a slow
                # client holds no backend while it trickles it in.
                try:
                    body = await req.body.read_all(deadline)
                except ClientFailed as exc:
                    self.refuse(conn, req, exc.status, str(exc))
                    return
                framing = b"Content-Length: %d\r\n" % len(body)
            else:
                body = req.body.stream(deadline)
                if length is None:
                    chunked = True
                    framing = b"Transfer-Encoding: chunked\r\n"
                else:
                    framing = b"Content-Length: %d\r\n" % length
        elif length is not None:
            framing = b"Content-Length: 0\r\n"
        repeatable = method in IDEMPOTENT and not has_body
        head, has_host = self._request_head(conn, req, framing)
        bodiless = method == b"HEAD"
        hash_key = self._hash_key(conn, req, route)
        if pick is not None:
            pinned, cookie_key = pick
        else:
            pinned, cookie_key = self._pinned(req, pool, req.started)
        tried: list[str] = []
        status = 502
        last = "no backend"
        first = 0
        if failed is not None and pinned is not None:
            tried.append(pinned.key)
            status, last, again = self._failure(pinned, failed, repeatable, req.body.started)
            first = 1 if again else 1 + b.config.retries
        for attempt in range(first, 1 + b.config.retries):
            now = time.monotonic()
            if attempt == 0 and pinned is not None:
                backend: Backend | None = pinned
            else:
                backend = route.chooser.choose(pool.available(now, tried), hash_key)
            if backend is None:
                if not tried:
                    status, last = 503, "no backend available"
                break
            if attempt:
                b.metrics.retries.labels(route.label).inc()
            tried.append(backend.key)
            task = backend.take()
            try:
                try:
                    resp = await upstream.request(
                        backend.host, backend.port,
                        head + b"\r\n" if has_host else head + backend.host_line + b"\r\n",
                        body, chunked, bodiless,
                    )
                except ClientFailed as exc:
                    # The client stopped sending (or is too slow): not the backend's fault.
                    self.refuse(conn, req, exc.status, str(exc))
                    return
                except (UpstreamError, OSError) as exc:
                    status, last, again = self._failure(backend, exc, repeatable, req.body.started)
                    if again:
                        continue
                    break
                await self._respond(conn, req, route, backend, resp, cookie_key)
                return
            finally:
                backend.give(task)
        self._fail(conn, req, route, status, last, tried)

    def _response_head(self, conn: ClientConnection, req: Request, route: Route, backend: Backend,
                       resp: Response | Head, cookie_key: str | None, framing: bytes,
                       drop: frozenset[bytes]) -> bytes:
        """Status line and fields for the client, ending in the blank line."""
        lines = [b"HTTP/1.1 %d %s\r\n" % (resp.status, resp.reason.encode("latin-1"))]
        headers = resp.headers
        prior_via = None
        for k, v in headers:
            lk = k.lower()
            if lk == b"connection":
                drop = drop | {t.strip(b" \t").lower() for t in v.split(b",")}
            elif lk == b"via":
                prior_via = v if prior_via is None else prior_via + b", " + v
        for k, v in headers:
            lk = k.lower()
            if lk not in drop and lk != b"via":
                lines.append(k + b": " + v + b"\r\n")
        via = self._via(resp.version)
        lines.append(b"Via: " + (prior_via + b", " + via if prior_via else via) + b"\r\n")
        sticky_cfg = route.pool.config.sticky
        if sticky_cfg is not None and cookie_key != backend.key:
            value = sticky.sign(self.balancer.secret, route.pool.name, backend.key)
            age = f"; Max-Age={sticky_cfg.max_age}" if sticky_cfg.max_age is not None else ""
            lines.append(f"Set-Cookie: {sticky_cfg.cookie}={value}; HttpOnly{age}; Path=/; SameSite=Lax\r\n".encode())
        lines.append(framing)
        if self._closes(conn, req):
            lines.append(b"Connection: close\r\n")
        elif req.version < (1, 1):
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _write_whole(self, conn: ClientConnection, req: Request, route: Route, backend: Backend,
                     head: Head | Response, data: bytes, cookie_key: str | None) -> None:
        """A response read whole (bodiless, or small): head and body in one write."""
        b = self.balancer
        status = head.status
        if backend.breaker.record(status < 500, time.monotonic()):
            b.metrics.trips.labels(backend.pool, backend.key).inc()
            _log("circuit_open", pool=backend.pool, backend=backend.key, cause=f"status_{status}")
        transport = conn.transport
        if transport is not None:
            if req.method == b"HEAD" or status in (204, 304) or status < 200:
                # No body whatever the fields say; a HEAD's or 304's Content-Length
                # describes the body a GET would get, and goes on as it came.
                drop = RESPONSE_DROP if status != 204 else RESPONSE_DROP_AND_LENGTH
                transport.write(self._response_head(conn, req, route, backend, head, cookie_key, b"", drop))
            else:
                transport.write(self._response_head(conn, req, route, backend, head, cookie_key,
                                                    b"Content-Length: %d\r\n" % len(data), RESPONSE_DROP_AND_LENGTH)
                                + data)
        b.metrics.observe(route.label, backend.key, status, time.monotonic() - req.started)

    async def _respond(self, conn: ClientConnection, req: Request, route: Route, backend: Backend,
                       resp: Response, cookie_key: str | None) -> None:
        b = self.balancer
        status = resp.status
        # The whole body, whichever side is slow: a backend trickling it or a
        # client not reading it must not hold a backend slot for longer.
        deadline = self.loop.time() + b.config.timeouts.response_body
        resp.deadline = deadline
        transport = conn.transport
        assert transport is not None
        length = resp.length
        if length is not None and length <= SMALL_BODY:
            try:
                data = await resp.read() if length else b""
            except UpstreamError as exc:
                resp.close()
                backend.breaker.record(False, time.monotonic())
                self._cut(conn, route, backend, exc)
                b.metrics.observe(route.label, backend.key, status, time.monotonic() - req.started)
                return
            self._write_whole(conn, req, route, backend, resp, data, cookie_key)
            return
        if backend.breaker.record(status < 500, time.monotonic()):
            b.metrics.trips.labels(backend.pool, backend.key).inc()
            _log("circuit_open", pool=backend.pool, backend=backend.key, cause=f"status_{status}")
        try:
            if length is not None:
                framing, chunk = b"Content-Length: %d\r\n" % length, False
            elif req.version >= (1, 1):
                framing, chunk = b"Transfer-Encoding: chunked\r\n", True
            else:
                framing, chunk = b"", False
                conn.closing = True  # the end of the body is the end of the connection
            transport.write(self._response_head(conn, req, route, backend, resp, cookie_key, framing,
                                                RESPONSE_DROP_AND_LENGTH))
            async for data in resp.iter_chunks():
                if conn.lost:
                    raise ClientFailed(400, "the client closed the connection")
                if chunk:
                    transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
                else:
                    transport.write(data)
                await conn.drain(deadline)
            if chunk:
                transport.write(b"0\r\n\r\n")
        except (UpstreamError, ClientFailed) as exc:
            # After the status line went out all we can do is cut the client's
            # connection, so that it sees a truncated response.
            resp.close()
            if isinstance(exc, UpstreamError):
                backend.breaker.record(False, time.monotonic())
            self._cut(conn, route, backend, exc)
        finally:
            resp.close()  # unless the body was read to its end: no reuse of a half-read connection
        b.metrics.observe(route.label, backend.key, status, time.monotonic() - req.started)

    @staticmethod
    def _cut(conn: ClientConnection, route: Route, backend: Backend, exc: Exception) -> None:
        _log("response_cut", route=route.label, backend=backend.key, error=repr(str(exc) or type(exc).__name__))
        conn.lost = True
        if conn.transport is not None:
            conn.transport.abort()

    # ---- WebSocket

    async def _websocket(self, conn: ClientConnection, req: Request, route: Route) -> None:
        """Relay an upgrade to a backend; once it answers 101, bytes flow both ways unread."""
        b = self.balancer
        now = time.monotonic()
        pool = route.pool
        pinned, _ = self._pinned(req, pool, now)
        backend = pinned or route.chooser.choose(pool.available(now), self._hash_key(conn, req, route))
        if backend is None:
            conn.closing = True
            conn.write_simple(503, "no backend available", True)
            return
        lines = self._upstream_fields(conn, req)
        lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        if b"host" not in req.fields.index:
            lines.append(backend.host_line)
        head = req.method + b" " + req.target + b" HTTP/1.1\r\n" + b"".join(lines) + b"\r\n"
        task = backend.take()
        tunnel: Tunnel | None = None
        try:
            timeouts = b.config.timeouts
            try:
                async with asyncio.timeout(timeouts.connect):
                    _, tunnel = await self.loop.create_connection(lambda: Tunnel(self.loop), backend.host, backend.port)
                assert tunnel.transport is not None
                tunnel.transport.write(head)
                raw = await tunnel.head(timeouts.read or 30)
                parsed = parse_head(raw, False, upgrade=True)
            except (OSError, TimeoutError, UpstreamError) as exc:
                b.failed(backend)
                conn.closing = True
                conn.write_simple(502, f"websocket upstream: {exc or type(exc).__name__}", True)
                if tunnel is not None and tunnel.transport is not None:
                    tunnel.transport.close()
                return
            assert conn.transport is not None
            b.metrics.observe(route.label, backend.key, parsed.status, time.monotonic() - req.started)
            drop = RESPONSE_DROP - {b"upgrade"} if parsed.status == 101 else RESPONSE_DROP
            lines_out = [b"HTTP/1.1 %d %s\r\n" % (parsed.status, parsed.reason.encode("latin-1"))]
            lines_out += [k + b": " + v + b"\r\n" for k, v in parsed.headers if k.lower() not in drop]
            if parsed.status != 101:
                # Refused by the backend: its answer (a short body at most), then close.
                conn.closing = True
                body = bytes(tunnel.buffer[: parsed.length or 0])
                lines_out.append(b"Connection: close\r\n\r\n")
                conn.transport.write(b"".join(lines_out) + body)
                tunnel.transport.close()  # type: ignore[union-attr]
                return
            lines_out.append(b"Via: " + self._via(parsed.version) + b"\r\nConnection: Upgrade\r\n\r\n")
            conn.transport.write(b"".join(lines_out) + bytes(tunnel.buffer))
            tunnel.buffer.clear()
            conn.tunnel = tunnel
            tunnel.client = conn
            if conn.early:
                tunnel.transport.write(conn.early)  # type: ignore[union-attr]
                conn.early = b""
            conn.head_since = None
            conn.resume_reading()
            await tunnel.closed
        finally:
            backend.give(task)
            if tunnel is not None and tunnel.transport is not None and not tunnel.transport.is_closing():
                tunnel.transport.close()
