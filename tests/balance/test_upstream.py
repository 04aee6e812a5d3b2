"""The lean upstream client against a raw TCP server that answers with exact bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from geodns.balance.upstream import BadResponse, Client, ConnectFailed, Disconnected, ReadTimeout

from .conftest import NET, free_port, url

HOST = f"{NET}.5"
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class Raw:
    """A server that reads one request head per exchange and writes `reply(head)`."""

    def __init__(self, reply: Callable[[bytes], bytes], close: bool = False) -> None:
        self.reply = reply
        self.close = close
        self.connections = 0
        self.received: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                body = b""
                if b"chunked" in head:
                    body = await reader.readuntil(b"0\r\n\r\n")
                self.received.append(head + body)
                writer.write(self.reply(head))
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[Callable[..., object]]:
    servers: list[asyncio.Server] = []

    async def make(reply: Callable[[bytes], bytes], close: bool = False) -> tuple[Raw, int]:
        r = Raw(reply, close)
        port = free_port(HOST)
        servers.append(await asyncio.start_server(r.serve, HOST, port))
        return r, port

    yield make
    for s in servers:
        s.close()


async def test_keep_alive_reuses_one_connection(raw) -> None:
    r, port = await raw(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    c = Client(1, 1, 10)
    for _ in range(3):
        resp = await c.request(HOST, port, GET, None, False, False)
        assert (resp.status, resp.reason, await resp.read()) == (200, "OK", b"ok")
    assert r.connections == 1
    c.close()


async def test_connection_close_and_until_close_bodies_are_not_reused(raw) -> None:
    r, port = await raw(lambda h: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end", close=True)
    c = Client(1, 1, 10)
    for _ in range(2):
        resp = await c.request(HOST, port, GET, None, False, False)
        assert resp.length is None and resp.until_close
        assert await resp.read() == b"to the end"
    assert r.connections == 2
    c.close()


async def test_chunked_with_extensions_and_trailers_after_100_continue(raw) -> None:
    body = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
    body += b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    r, port = await raw(lambda h: body)
    c = Client(1, 1, 10)
    resp = await c.request(HOST, port, GET, None, False, False)
    assert resp.status == 201 and resp.chunked
    assert [chunk async for chunk in resp.iter_chunks()] == [b"hello", b" world"]
    resp = await c.request(HOST, port, GET, None, False, False)  # framing held: reusable
    assert await resp.read() == b"hello world"
    assert r.connections == 1
    c.close()


async def test_head_and_204_have_no_body(raw) -> None:
    r, port = await raw(lambda h: b"HTTP/1.1 204 No Content\r\n\r\n" if h.startswith(b"GET")
                        else b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    c = Client(1, 1, 10)
    resp = await c.request(HOST, port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", None, False, True)
    assert (resp.status, resp.length, resp.done) == (200, 0, True)
    resp = await c.request(HOST, port, GET, None, False, False)
    assert (resp.status, await resp.read()) == (204, b"")
    assert r.connections == 1
    c.close()


async def test_chunked_request_body(raw) -> None:
    r, port = await raw(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"defgh"

    c = Client(1, 1, 10)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    resp = await c.request(HOST, port, head, chunks(), True, False)
    assert resp.status == 200
    assert r.received[0].endswith(b"\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
    c.close()


async def test_failures_are_named(raw) -> None:
    c = Client(1, 0.3, 10)
    with pytest.raises(ConnectFailed):
        await c.request(HOST, free_port(HOST), GET, None, False, False)
    _, port = await raw(lambda h: b"SMTP ready\r\n\r\n")
    with pytest.raises(BadResponse):
        await c.request(HOST, port, GET, None, False, False)
    _, port = await raw(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close=True)
    resp = await c.request(HOST, port, GET, None, False, False)
    with pytest.raises(Disconnected):
        await resp.read()
    _, port = await raw(lambda h: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    resp = await c.request(HOST, port, GET, None, False, False)
    with pytest.raises(ReadTimeout):
        await resp.read()
    c.close()


# ------------------------------------------------------------------ through the balancer


async def test_head_http10_without_host_and_chunked_upload(backends, balancer, client) -> None:
    backs = await backends(1, first=55)
    b = await balancer({"pools": {"web": {"backends": [backs[0].address]}}})
    async with client.head(url(b, "/x")) as r:
        assert r.status == 200 and r.headers["X-Backend"] == "b0"
        assert await r.read() == b""
    a = b.addresses[0]
    reader, writer = await asyncio.open_connection(a.host, a.port)
    writer.write(b"GET /headers HTTP/1.0\r\n\r\n")  # no Host: the backend's address is sent
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
    assert f'"Host": "{backs[0].address}"'.encode() in data

    async def gen() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"y" * 4096

    async with client.post(url(b, "/post"), data=gen()) as r:  # no length: chunked both hops
        assert (await r.json())["size"] == 40 * 4096
