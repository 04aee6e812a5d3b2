"""A lean HTTP/1.1 client for the proxy's hop to its backends.

aiohttp's ClientSession spent about 40% of a request's CPU in the balancer
(URL objects, request objects, auto headers, tracing hooks); this client
writes the request head as one byte string on a pooled keep-alive
connection and parses the response head with `bytes.split`. It knows only
what a proxy hop needs: a request head plus an optional body (whole or
streamed), and a response whose body is delimited by Content-Length, chunked
coding, or the end of the connection (RFC 9112 section 6.3). WebSocket
upgrades and health probes still use aiohttp.

Failures are named by what they mean for a retry: `ConnectFailed` never
reached the backend; `Disconnected`, `ReadTimeout` and `BadResponse` may have.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

MAX_HEAD = 64 * 1024
"""Largest response head accepted (aiohttp's default is 8 KiB per line)."""
READ_SIZE = 64 * 1024


class UpstreamError(Exception):
    """The hop to the backend failed."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable or timed out. The backend saw nothing."""


class Disconnected(UpstreamError):
    """The backend closed the connection before the response was complete."""


class ReadTimeout(UpstreamError, TimeoutError):
    """No byte from the backend within the read timeout."""


class BadResponse(UpstreamError):
    """The backend's response is not HTTP/1.x we can frame."""


class Connection(asyncio.Protocol):
    """One TCP connection to a backend: a receive buffer and a waiter."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.used = False
        """Has carried a response already (a reused connection)."""
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None

    # ---- protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
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

    async def wait_data(self, timeout: float | None) -> None:
        """Until more bytes arrive or the connection ends; ReadTimeout after `timeout`."""
        if self.closed:
            raise Disconnected("backend closed the connection")
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
                 "_conn", "_pool", "_timeout", "_left", "done")

    def __init__(self, conn: Connection, pool: Pool, timeout: float | None) -> None:
        self._conn = conn
        self._pool = pool
        self._timeout = timeout
        self.done = False

    async def read_head(self, bodiless: bool) -> None:
        conn = self._conn
        while True:
            end = conn.buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(conn.buffer) > MAX_HEAD:
                    raise BadResponse("response head too large")
                await conn.wait_data(self._timeout)
                end = conn.buffer.find(b"\r\n\r\n")
            head = bytes(conn.buffer[:end])
            del conn.buffer[: end + 4]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise BadResponse(f"bad status line {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # interim response (100 Continue): the real one follows
            break
        self.status = status
        self.reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
        self.version = (1, 1) if parts[0] == b"HTTP/1.1" else (1, 0)
        headers = []
        length = None
        chunked = False
        keep_alive = self.version == (1, 1)
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name[-1:] in (b" ", b"\t"):
                raise BadResponse(f"bad header line {line[:80]!r}")
            k = name.decode("latin-1")
            v = value.strip().decode("latin-1")
            lk = k.lower()
            if lk == "content-length":
                if not v.isdigit() or (length is not None and int(v) != length):
                    raise BadResponse(f"bad Content-Length {v!r}")
                length = int(v)
            elif lk == "transfer-encoding":
                chunked = v.lower().endswith("chunked")
            elif lk == "connection":
                tokens = v.lower()
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
            headers.append((k, v))
        self.headers = headers
        if bodiless or status in (101, 204, 304):
            length, chunked = 0, False
        elif chunked:
            length = None  # chunked coding wins over a Content-Length (RFC 9112 section 6.3)
        self.length = length
        self.chunked = chunked
        self.until_close = length is None and not chunked
        self._left = length
        if not keep_alive or self.until_close:
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
                    await conn.wait_data(self._timeout)
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
        while left:
            if not conn.buffer:
                await conn.wait_data(self._timeout)
            data = bytes(conn.buffer[:left])
            del conn.buffer[:left]
            left -= len(data)
            yield data

    async def _line(self) -> bytes:
        conn = self._conn
        while (end := conn.buffer.find(b"\r\n")) < 0:
            if len(conn.buffer) > MAX_HEAD:
                raise BadResponse("chunk line too long")
            await conn.wait_data(self._timeout)
        line = bytes(conn.buffer[:end])
        del conn.buffer[: end + 2]
        return line

    async def _dechunk(self) -> AsyncIterator[bytes]:
        while True:
            size_text = (await self._line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return
            async for data in self._exactly(size):
                yield data
            if await self._line():
                raise BadResponse("chunk not followed by CRLF")


class Pool:
    """The exchange of one request: a connection taken from (or returned to) its backend's idle list."""

    __slots__ = ("keep", "_client", "_key")

    def __init__(self, client: Client, key: tuple[str, int]) -> None:
        self.keep = True
        self._client = client
        self._key = key

    def release(self, conn: Connection, keep: bool) -> None:
        if keep and not conn.closed and not conn.buffer:
            self._client._idle_put(self._key, conn)
        else:
            conn.close()


class Client:
    """Keep-alive connections to backends, and `request()` over them."""

    def __init__(self, connect_timeout: float, read_timeout: float | None, idle_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[Connection]] = {}
        self._loop = asyncio.get_running_loop()

    def _idle_put(self, key: tuple[str, int], conn: Connection) -> None:
        conn.used = True
        conn.idle_timer = self._loop.call_later(self.idle_timeout, conn.close)
        self._idle.setdefault(key, []).append(conn)

    async def _connection(self, host: str, port: int) -> Connection:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()  # the most recently used is the least likely to be stale
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
            if not conn.closed:
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


def header_bytes(pairs: list[tuple[str, str]]) -> bytes:
    """`Name: value` lines. Values come from aiohttp's parser (no CR or LF) or from us;
    surrogateescape gives back the exact bytes the client sent."""
    return "".join([f"{k}: {v}\r\n" for k, v in pairs]).encode("utf-8", "surrogateescape")
