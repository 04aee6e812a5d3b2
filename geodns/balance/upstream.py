"""A lean HTTP/1.1 client for the proxy's hop to its backends.

aiohttp's ClientSession spent about 40% of a request's CPU in the balancer
(URL objects, request objects, auto headers, tracing hooks); this client
writes the request head as one byte string on a pooled keep-alive
connection and parses the response head itself. It knows only what a proxy
hop needs: a request head plus an optional body (whole or streamed), and a
response whose body is delimited by Content-Length, chunked coding, or the
end of the connection (RFC 9112 section 6.3). WebSocket upgrades and health
probes still use aiohttp.

The response head is checked against the RFC 9112 grammar line by line
(`parse_head`, a pure function); what does not match is refused with a named
`BadResponse`, never guessed at, because a proxy that frames a response
differently from its backend hands the rest of it to the next client. The
parser is tested byte for byte against h11 on mutated responses
(tests/balance/test_framing.py); where it is deliberately stricter the
difference is one of the named errors below.

Why not llhttp here too (httptools' HttpResponseParser, which parses client
requests in proxy.py): it is faster in isolation (about 1.5 us against 7 us
for a two-field head and its body, timeit on this project's VM) and refuses
most of what this parser refuses (bad chunk sizes and extensions, obs-fold,
CL in trailers), yet it takes an `HTTP/2.0` status line on an HTTP/1.1
connection, and its errors are one class with a message, where the tests
here hold each refusal to its name (test_framing.py); on the fast
path `parse_head` is one C-level regex match and a short loop, about a tenth
of a request's CPU. One parser, tested against h11, frames every
response; two would be the disagreement this module exists to avoid.

Failures are named by what they mean for a retry: `ConnectFailed` never
reached the backend; `Disconnected`, `ReadTimeout` and `BadResponse` may have.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

MAX_HEAD = 64 * 1024
"""Largest response head (and chunk line, and trailer section) accepted."""
READ_SIZE = 64 * 1024
MAX_LENGTH_DIGITS = 20
"""Content-Length and chunk-size digits accepted (h11 bounds both at 20)."""


class UpstreamError(Exception):
    """The hop to the backend failed."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable or timed out. The backend saw nothing."""


class Disconnected(UpstreamError):
    """The backend closed the connection before the response was complete."""


class ReadTimeout(UpstreamError, TimeoutError):
    """No byte from the backend within the read timeout, or the body past its deadline."""


class BadResponse(UpstreamError):
    """The backend's response is not HTTP/1.x we can frame."""


class BadStatusLine(BadResponse):
    """Not `HTTP/1.x NNN reason` (RFC 9112 section 4)."""


class UnsupportedVersion(BadStatusLine):
    """A major version other than 1 on an HTTP/1.1 connection."""


class BadHeaderLine(BadResponse):
    """A field line that is not `token ":" OWS field-value OWS` (RFC 9112 section 5)."""


class ObsFold(BadHeaderLine):
    """A field line folded onto the next line (obs-fold). RFC 9112 section 5.2 lets a
    proxy refuse it with 502 instead of unfolding it; we refuse."""


class ControlCharacter(BadHeaderLine):
    """A control character (other than HTAB) in a field value or reason phrase
    (RFC 9110 section 5.5: they are not field-vchar)."""


class BareLineFeed(BadResponse):
    """A line ended by LF alone. RFC 9112 section 2.2 allows a recipient to accept
    it; two parsers that differ on it frame a message differently, so we refuse."""


class BadContentLength(BadResponse):
    """Content-Length not 1*DIGIT, or several that differ (RFC 9110 section 8.6)."""


class BadChunk(BadResponse):
    """A chunk-size line that is not 1*HEXDIG [chunk-ext], or chunk data not
    followed by CRLF (RFC 9112 section 7.1)."""


class BadChunkExtension(BadChunk):
    """A chunk-ext outside the RFC 9112 section 7.1.1 grammar (h11 takes any `;...`)."""


class BadTrailer(BadResponse):
    """A framing field (Content-Length, Transfer-Encoding) in the trailer section,
    where RFC 9110 section 6.5.1 forbids it (h11 checks only its value)."""


class UnsolicitedUpgrade(BadResponse):
    """101 Switching Protocols to a request that asked for no upgrade."""


# RFC 9110 section 5.6.2 token, 5.5 field-vchar (VCHAR / obs-text), 5.6.4 quoted-string.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_STATUS = rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?"
_STATUS_LINE = re.compile(_STATUS)
_FIELD = _TOKEN + rb":[ \t]*(?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?[ \t]*"
_FIELD_LINE = re.compile(_FIELD)
_HEAD = re.compile(_STATUS + rb"((?:\r\n" + _FIELD + rb")*)")
"""A whole response head at once: one C-level match per response, not one per line."""
_PAIRS = re.compile(rb"\r\n([^:]+):[ \t]*([^\r]*?)[ \t]*(?=\r\n|\Z)")
"""(name, value) of each field line of a head `_HEAD` matched, OWS stripped."""
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,%d})(;[^\n]*)?[ \t]*" % MAX_LENGTH_DIGITS)
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*[ \t]*"
)
_DIGITS = re.compile(rb"[0-9]{1,%d}" % MAX_LENGTH_DIGITS)
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _bad_line(line: bytes, where: str) -> BadResponse:
    """The most specific error for a line that does not match the grammar."""
    text = f"{where} {line[:80]!r}"
    if b"\n" in line:
        return BareLineFeed(f"bare LF in {text}")
    if line[:1] in (b" ", b"\t") and where != "status line":
        return ObsFold(f"obs-fold in {text}")
    if _CTL.search(line):
        return ControlCharacter(f"control character in {text}")
    if where == "status line":
        return BadStatusLine(f"bad {text}")
    return BadHeaderLine(f"bad {text}")


def _fields(lines: list[bytes], where: str) -> list[tuple[bytes, bytes]]:
    """(name, value) of each field line; the first line off the grammar raises its error."""
    for line in lines:
        if _FIELD_LINE.fullmatch(line) is None:
            raise _bad_line(line, where)
    return [_field(line) for line in lines]


def _field(line: bytes) -> tuple[bytes, bytes]:
    """(name, value) of a field line already known to match the grammar."""
    name, _, value = line.partition(b":")
    return name, value.strip(b" \t")


def _length_list(value: bytes) -> bytes:
    """The one length of a Content-Length like `42, 42` (RFC 9110 section 8.6), or BadContentLength."""
    lengths = {v.strip(b" \t") for v in value.split(b",")}
    text = lengths.pop() if len(lengths) == 1 else b","
    if not _DIGITS.fullmatch(text):
        raise BadContentLength(f"bad Content-Length {value[:40]!r}")
    return text


def _tokens(value: bytes) -> set[bytes]:
    """The elements of a comma-separated list field, lower-cased (RFC 9110 section 5.6.1)."""
    return {t.strip(b" \t").lower() for t in value.split(b",")}


class Head(NamedTuple):
    """A final response head and how its body is framed.

    A NamedTuple rather than a frozen dataclass: one is built per response, and
    it costs a third as much."""

    status: int
    reason: str
    version: tuple[int, int]
    headers: list[tuple[bytes, bytes]]
    """Field lines as received (names with their case), values without surrounding OWS;
    bytes, because a proxy passes them on as they came."""
    length: int | None
    """Body length when it is known: Content-Length, or 0 for bodiless responses."""
    chunked: bool
    """The body is in chunked coding (Transfer-Encoding exactly `chunked`)."""
    keep_alive: bool
    """The connection can carry another exchange once this body has been read."""

    @property
    def until_close(self) -> bool:
        """The body ends when the backend closes the connection."""
        return self.length is None and not self.chunked


def parse_status(line: bytes) -> tuple[int, int, str]:
    """(status, minor version, reason) of a status line."""
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        raise _bad_line(line, "status line")
    if m[1] != b"1":
        raise UnsupportedVersion(f"HTTP/{m[1].decode()}.{m[2].decode()} on an HTTP/1.1 connection")
    status = int(m[3])
    if status < 100:
        raise BadStatusLine(f"bad status code {status:03d}")
    return status, int(m[2]), (m[4] or b"").decode("latin-1")


def parse_head(head: bytes, bodiless: bool, upgrade: bool = False) -> Head:
    """A final response head (status line and field lines, without the blank line).

    `bodiless`: the request was HEAD, so the response has no body whatever it says.
    `upgrade`: the request asked for an upgrade, so 101 is a final answer (after it
    the connection carries the new protocol: no body, no reuse).
    Framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304; a
    Transfer-Encoding that is exactly `chunked` is chunked; any other
    Transfer-Encoding is read to the close; else Content-Length; else to the close.
    """
    m = _HEAD.fullmatch(head)
    if m is None:
        # Off the grammar somewhere: find the line and name what is wrong with it.
        lines = head.split(b"\r\n")
        parse_status(lines[0])
        _fields(lines[1:], "header line")
        raise BadHeaderLine(f"bad response head {head[:80]!r}")
    if m[1] != b"1":
        raise UnsupportedVersion(f"HTTP/{m[1].decode()}.{m[2].decode()} on an HTTP/1.1 connection")
    status = int(m[3])
    if status < 100:
        raise BadStatusLine(f"bad status code {status:03d}")
    if status == 101 and not upgrade:
        raise UnsolicitedUpgrade("101 Switching Protocols without an upgrade request")
    reason = m[4].decode("latin-1") if m[4] else ""
    minor = int(m[2])
    # The grammar matched every line already: one C-level split into (name, value) pairs.
    headers = _PAIRS.findall(m[5]) if m[5] else []
    length_text: bytes | None = None
    codings: list[bytes] = []
    connection: set[bytes] = set()
    for name, value in headers:
        lk = name.lower()
        if lk == b"content-length":
            text = value if value.isdigit() and len(value) <= MAX_LENGTH_DIGITS else _length_list(value)
            if length_text is not None and text != length_text:
                raise BadContentLength(f"Content-Length {length_text[:40]!r} and {text[:40]!r}")
            length_text = text
        elif lk == b"transfer-encoding":
            codings.append(value)
        elif lk == b"connection":
            connection |= _tokens(value)
    version = (1, 1) if minor >= 1 else (1, 0)
    if version == (1, 1):
        keep_alive = b"close" not in connection
    else:
        keep_alive = b"keep-alive" in connection and b"close" not in connection
    length = int(length_text) if length_text is not None else None
    chunked = False
    if bodiless or status in (204, 304) or status < 200:
        length = 0
    elif codings:
        # Transfer-Encoding overrides Content-Length; both at once may be an attempt
        # at smuggling (RFC 9112 section 6.3 item 3): frame by the coding, then close.
        chunked = b", ".join(codings).lower() == b"chunked"
        if length is not None or version == (1, 0):
            keep_alive = False
        length = None
    if length is None and not chunked or status == 101:
        keep_alive = False
    return Head(status, reason, version, headers, length, chunked, keep_alive)


def parse_chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (without its CRLF); extensions are checked and dropped."""
    m = _CHUNK_LINE.fullmatch(line)
    if m is None:
        if b"\n" in line:
            raise BareLineFeed(f"bare LF in chunk line {line[:40]!r}")
        raise BadChunk(f"bad chunk size {line[:40]!r}")
    if m[2] is not None and not _CHUNK_EXT.fullmatch(m[2]):
        raise BadChunkExtension(f"bad chunk extension {m[2][:40]!r}")
    return int(m[1], 16)


def next_head(buffer: bytearray, bodiless: bool) -> Head | None:
    """The final response head at the start of `buffer`, consumed from it together with
    any 1xx interim responses before it (100 Continue, 103 Early Hints); None while it
    has not all arrived. What cannot be a head is refused at once, never waited on."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise BadResponse("response head too large")
            if (bare := _BARE_LF.search(buffer)) is not None:
                raise BareLineFeed(f"bare LF in response head at byte {bare.start()}")
            return None
        if end > MAX_HEAD:
            raise BadResponse("response head too large")
        raw = bytes(buffer[:end])
        if raw.count(b"\n") != raw.count(b"\r\n"):
            raise BareLineFeed(f"bare LF in response head {raw[:80]!r}")
        del buffer[: end + 4]
        head = parse_head(raw, bodiless)
        if head.status >= 200:
            return head


class Connection(asyncio.Protocol):
    """One TCP connection to a backend: a receive buffer and a waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.used = False
        """Has carried a response already (a reused connection)."""
        self.idle = False
        """In the keep-alive pool: any byte arriving now is not an answer to anything."""
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.idle_since = 0.0
        """Loop time it went back to the keep-alive pool."""
        self.exchange: Any = None
        """An exchange driven by this connection's callbacks (`on_data()`, `on_lost()`)
        rather than by a coroutine waiting in `wait_data()`: the proxy's fast path."""

    # ---- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:
            # A late or extra response (a backend that read a body as a second
            # request would send one): this connection can never be trusted again.
            self.close()
            return
        self.buffer += data
        if self.exchange is not None:
            self.exchange.on_data()
            return
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.on_lost()
        for w in (self._waiter, self._drain):
            if w is not None and not w.done():
                w.set_result(None)

    def pause_writing(self) -> None:
        self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    # ---- I/O

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def drain(self) -> None:
        if self._drain is not None:
            await self._drain
        if self.closed:
            raise Disconnected("backend closed the connection while we were sending")

    async def wait_data(self, timeout: float | None, deadline: float | None = None) -> None:
        """Until more bytes arrive or the connection ends; ReadTimeout after `timeout`
        seconds, or at `deadline` (loop time) if that comes first."""
        if self.closed:
            raise Disconnected("backend closed the connection")
        if deadline is not None:
            left = deadline - self.loop.time()
            if left <= 0:
                raise ReadTimeout("response body deadline passed")
            timeout = min(timeout, left) if timeout else left
        w = self._waiter = self.loop.create_future()
        timer = self.loop.call_later(timeout, _expire, w) if timeout else None
        try:
            await w
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
        if not self.buffer and self.closed:
            raise Disconnected("backend closed the connection")


def _expire(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_exception(ReadTimeout("backend read timeout"))


class Response:
    """A response head, and its body to read whole or stream."""

    __slots__ = ("status", "reason", "version", "headers", "length", "chunked", "until_close",
                 "deadline", "_conn", "_pool", "_timeout", "_left", "done")

    def __init__(self, conn: Connection, pool: Pool, timeout: float | None) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self.deadline: float | None = None
        """Loop time by which the whole body must have arrived (None: no limit)."""
        self.done = False

    async def read_head(self, bodiless: bool) -> None:
        conn = self._conn
        while (head := next_head(conn.buffer, bodiless)) is None:
            await conn.wait_data(self._timeout)
        self.start(head)

    def start(self, head: Head) -> None:
        """Take the final response head `head`, already consumed from the buffer."""
        status, self.reason, self.version, self.headers, length, chunked, keep_alive = head
        self.status = status
        self.length = self._left = length
        self.chunked = chunked
        self.until_close = length is None and not chunked
        if not keep_alive:
            self._pool.keep = False
        if length == 0:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self._pool.release(self._conn, self._pool.keep)

    def close(self) -> None:
        """Give up on the response: the connection cannot be reused."""
        if not self.done:
            self.done = True
            self._conn.close()

    async def read(self) -> bytes:
        """The whole body (for small bodies of known length)."""
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        if self.done:
            return
        conn = self._conn
        if self.chunked:
            async for chunk in self._dechunk():
                yield chunk
        elif self.until_close:
            while True:
                if conn.buffer:
                    data = bytes(conn.buffer)
                    conn.buffer.clear()
                    yield data
                if conn.closed:
                    break
                try:
                    await conn.wait_data(self._timeout, self.deadline)
                except Disconnected:
                    break
        else:
            async for data in self._exactly(self._left or 0):
                self._left -= len(data)
                yield data
        self._finish()

    async def _exactly(self, left: int) -> AsyncIterator[bytes]:
        """The next `left` bytes of the body, as they arrive."""
        conn = self._conn
        while left > 0:
            if not conn.buffer:
                await conn.wait_data(self._timeout, self.deadline)
            data = bytes(conn.buffer[:left])
            del conn.buffer[:left]
            left -= len(data)
            yield data

    async def _line(self, limit: int = MAX_HEAD) -> bytes:
        conn = self._conn
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > limit:
                raise BadChunk("chunk line or trailer section too long")
            if b"\n" in conn.buffer:
                raise BareLineFeed("bare LF in a chunk line or trailer")
            await conn.wait_data(self._timeout, self.deadline)
        if conn.buffer.find(b"\n", 0, end) >= 0:
            raise BareLineFeed("bare LF in a chunk line or trailer")
        if end > limit:
            raise BadChunk("chunk line or trailer section too long")
        line = bytes(conn.buffer[:end])
        del conn.buffer[: end + 2]
        return line

    async def _dechunk(self) -> AsyncIterator[bytes]:
        while True:
            size = parse_chunk_size(await self._line())
            if size == 0:
                break
            async for data in self._exactly(size):
                yield data
            if await self._line(0):
                raise BadChunk("chunk data not followed by CRLF")
        # The trailer section: field lines up to an empty line, checked like a
        # head and bounded like one, then dropped (we do not forward trailers).
        trailers = []
        room = MAX_HEAD
        while line := await self._line(room):
            trailers.append(line)
            room -= len(line) + 2
        for name, _ in _fields(trailers, "trailer line"):
            if name.lower() in (b"content-length", b"transfer-encoding"):
                raise BadTrailer(f"{name.decode('latin-1')} in the trailer section")


class Pool:
    """The exchange of one request: a connection taken from (or returned to) its backend's idle list."""

    __slots__ = ("keep", "_client", "_key")

    def __init__(self, client: Client, key: tuple[str, int]) -> None:
        self.keep = True
        self._client = client
        self._key = key

    def release(self, conn: Connection, keep: bool) -> None:
        self._client.release(self._key, conn, keep)


class Client:
    """Keep-alive connections to backends, and `request()` over them."""

    def __init__(self, connect_timeout: float, read_timeout: float | None, idle_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None

    def release(self, key: tuple[str, int], conn: Connection, keep: bool) -> None:
        """An exchange on `conn` is over: back to the keep-alive pool, or closed.

        Bytes already past the end of its response mean the backend framed it
        differently from us: the connection is closed, never reused."""
        if keep and not conn.closed and not conn.buffer:
            conn.used = True
            conn.idle = True
            conn.idle_since = self._loop.time()
            idle = self._idle.get(key)
            if idle is None:
                self._idle[key] = [conn]
            else:
                idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(self.idle_timeout / 2, self._sweep)
        else:
            conn.close()

    def _sweep(self) -> None:
        """Close connections idle longer than idle_timeout (one timer per client, not per connection)."""
        self._sweeper = None
        cutoff = self._loop.time() - self.idle_timeout
        for key, conns in list(self._idle.items()):
            stale = [c for c in conns if c.idle_since <= cutoff or c.closed]
            for c in stale:
                c.close()
            conns[:] = [c for c in conns if not c.closed]
            if not conns:
                del self._idle[key]
        if self._idle:
            self._sweeper = self._loop.call_later(self.idle_timeout / 2, self._sweep)

    def idle_connection(self, host: str, port: int) -> Connection | None:
        """A pooled keep-alive connection to host:port, if one is ready."""
        idle = self._idle.get((host, port))
        if not idle:
            return None
        cutoff = self._loop.time() - self.idle_timeout
        while idle:
            conn = idle.pop()  # the most recently used is the least likely to be stale
            conn.idle = False
            if not conn.closed and not conn.buffer and conn.idle_since > cutoff:
                return conn
            conn.close()
        return None

    async def _connection(self, host: str, port: int) -> Connection:
        conn = self.idle_connection(host, port)
        if conn is not None:
            return conn
        loop = self._loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: Connection(loop), host, port), self.connect_timeout
            )
        except TimeoutError:
            raise ConnectFailed(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"connect to {host}:{port}: {exc.strerror or exc}") from None
        return conn

    async def request(
        self,
        host: str,
        port: int,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
        bodiless_response: bool,
    ) -> Response:
        """Send `head` (request line and headers, ending in a blank line) and a body; read the response head.

        `body` is bytes (sent with the head in one write) or an async iterator
        of chunks, sent in chunked coding when `chunked`.
        """
        conn = await self._connection(host, port)
        assert conn.transport is not None
        try:
            if body is None or isinstance(body, bytes):
                conn.transport.write(head + body if body else head)
            else:
                conn.transport.write(head)
                async for chunk in body:
                    if not chunk:
                        continue
                    if chunked:
                        conn.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                    else:
                        conn.transport.write(chunk)
                    await conn.drain()
                if chunked:
                    conn.transport.write(b"0\r\n\r\n")
            response = Response(conn, Pool(self, (host, port)), self.read_timeout)
            await response.read_head(bodiless_response)
        except BaseException:
            conn.close()
            raise
        return response

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


def header_bytes(pairs: list[tuple[str, str]]) -> bytes:
    """`Name: value` lines. Values come from aiohttp's parser (no CR or LF) or from us;
    surrogateescape gives back the exact bytes the client sent."""
    return "".join([f"{k}: {v}\r\n" for k, v in pairs]).encode("utf-8", "surrogateescape")
