"""The client side of the data path (proxy.ClientConnection) over raw sockets: pipelining,
head size limits, half-close, 100-continue, what follows a refusal."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest

from .conftest import url


async def exchange(b, data: bytes, half_close: bool = False, wait: float = 5.0) -> bytes:
    """Send `data` on a new connection (then shut our side if `half_close`); all that comes
    back until the balancer closes the connection or `wait` seconds pass."""
    a = b.addresses[0]
    reader, writer = await asyncio.open_connection(a.host, a.port)
    writer.write(data)
    if half_close:
        writer.write_eof()
    got = bytearray()
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        pass
    finally:
        writer.close()
    return bytes(got)


def responses(data: bytes, bodiless: tuple[int, ...] = ()) -> list[tuple[int, bytes]]:
    """(status, body) of each Content-Length-framed response in `data`, in order; the
    responses numbered in `bodiless` answer a HEAD (no body, whatever the length says)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        n = int(m[1]) if m and len(out) not in bodiless else 0
        out.append((status, rest[:n]))
        data = rest[n:]
    return out


@pytest.fixture
async def proxied(backends, balancer):
    backs = await backends(1, first=70)
    return await balancer({"pools": {"web": {"backends": [backs[0].address]}}})


async def test_pipelined_requests_are_answered_in_order(proxied) -> None:
    paths = [f"/p{i}" for i in range(6)]
    data = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths)
    data += b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nPOST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    data += b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = responses(await exchange(proxied, data), bodiless=(6,))
    assert [s for s, _ in got] == [200] * 9
    assert [json.loads(body)["path"] for _, body in got[:6]] == paths
    assert json.loads(got[7][1])["size"] == 3
    assert json.loads(got[8][1])["path"] == "/last"


async def test_head_limits_are_refused_with_one_log_line_each(proxied, caplog) -> None:
    caplog.set_level(logging.INFO, logger="geodns.balance")
    long_field = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
    long_target = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    many_fields = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(700))
    for data, status in ((long_field, 431), (long_target, 414), (many_fields + b"\r\n", 431)):
        got = await exchange(proxied, data)
        assert responses(got)[0][0] == status, got[:100]
    lines = [r.getMessage() for r in caplog.records if "event=bad_request" in r.getMessage()]
    assert len(lines) == 3 and all("status=4" in line for line in lines), lines
    async with asyncio.timeout(5):  # and the balancer still serves
        got = await exchange(proxied, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert responses(got)[0][0] == 200


async def test_nothing_after_a_refused_request_is_answered(proxied) -> None:
    data = (b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /post HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 34\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    got = responses(await exchange(proxied, data))
    assert [s for s, _ in got] == [200, 400], got
    assert json.loads(got[0][1])["path"] == "/first"


async def test_half_closed_client_gets_its_answers(proxied) -> None:
    data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.0\r\n\r\n"
    got = responses(await exchange(proxied, data, half_close=True))
    assert [json.loads(body)["path"] for _, body in got] == ["/a", "/b"]


async def test_expect_100_continue(proxied) -> None:
    data = b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    a = proxied.addresses[0]
    reader, writer = await asyncio.open_connection(a.host, a.port)
    writer.write(data)
    async with asyncio.timeout(5):
        interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        rest = await reader.read()
    writer.close()
    assert responses(rest)[0][0] == 200 and json.loads(responses(rest)[0][1])["size"] == 5


async def test_http10_keep_alive_and_close(proxied, client) -> None:
    got = await exchange(proxied, b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /two HTTP/1.0\r\n\r\n")
    heads = re.findall(rb"HTTP/1\.1 200 OK\r\n(?:.*\r\n)*?\r\n", got)
    assert len(heads) == 2
    assert b"Connection: keep-alive" in heads[0] and b"Connection: close" in heads[1]
    async with client.get(url(proxied, "/three")) as r:  # and an ordinary client meanwhile
        assert r.status == 200


async def test_upgrade_the_backend_refuses_is_passed_on_and_closed(proxied) -> None:
    data = (b"GET /not-ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await exchange(proxied, data)
    assert [s for s, _ in responses(got)] == [200], got  # the backend's answer, then the close
    assert json.loads(responses(got)[0][1])["path"] == "/not-ws"
