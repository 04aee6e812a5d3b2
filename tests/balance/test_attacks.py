"""Attacks on `geodns balance` as a real process, over real sockets, as a client or a
backend would make them: request smuggling, unframeable responses, slow clients
and backends, connection floods, sticky cookies across workers, log floods."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .conftest import NET, free_port

HOST = f"{NET}.6"


class Proc:
    """A `python -m geodns.balance` process; its stderr goes to a file the test reads."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], workers: int = 1) -> None:
        self.listen = f"{HOST}:{free_port(HOST)}"
        self.admin = f"{HOST}:{free_port(HOST)}"
        config = {"listen": self.listen, "admin": {"listen": self.admin, "token": "t"}, "drain_timeout": 2,
                  **config}
        path = tmp_path / f"balance-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log_path = path.with_suffix(".log")
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geodns.balance", "--config", str(path), "--workers", str(workers)],
            stderr=self.log_file,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listen.rsplit(":", 1)
        return host, int(port)

    async def wait_up(self) -> None:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"balancer exited:\n{self.log()}"
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://{self.admin}/v1/load") as r:
                        if r.status in (200, 503):
                            return
                await asyncio.sleep(0.1)
        raise AssertionError("balancer did not start")

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log_file.close()
        return self.log_path.read_text()


@pytest.fixture
async def balance(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: `await balance(config, workers=1)` starts a balancer process and waits for it."""
    started: list[Proc] = []

    async def make(config: dict[str, Any], workers: int = 1) -> Proc:
        p = Proc(tmp_path, config, workers)
        started.append(p)
        await p.wait_up()
        return p

    yield make
    for p in started:
        p.stop()


async def exchange(address: tuple[str, int], data: bytes, wait: float = 3.0) -> bytes:
    """Send `data` on a new connection; everything received until it closes or `wait` passes."""
    return await trickle(address, data, b"", wait, wait)


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


async def backend_paths(session: aiohttp.ClientSession, backend: Any) -> list[str]:
    async with session.get(f"{backend.url}/control/stats") as r:
        return (await r.json())["paths"]


def smuggled(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def post(headers: str, body: bytes, version: str = "1.1") -> bytes:
    return f"POST /post HTTP/{version}\r\nHost: x\r\n{headers}\r\n".encode() + body


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


# ---------------------------------------------------------------- request smuggling


def smuggling_attempts() -> dict[str, tuple[bytes, set[int]]]:
    """name -> (bytes to send, statuses that count as refused)."""
    body = smuggled("/smuggled")
    n = len(body)
    refused = {400}
    attempts = {
        "connection: content-length": (post(f"Connection: content-length\r\nContent-Length: {n}\r\n", body), refused),
        "connection: CONTENT-LENGTH last": (
            post(f"Connection: keep-alive, CONTENT-LENGTH\r\nContent-Length: {n}\r\n", body), refused),
        "connection: tab and spaces": (
            post(f"Connection: keep-alive ,\t Content-Length \t\r\nContent-Length: {n}\r\n", body), refused),
        "second connection line": (
            post(f"Connection: keep-alive\r\nConnection: content-length\r\nContent-Length: {n}\r\n", body), refused),
        "connection: transfer-encoding": (
            post("Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", chunked(body)), refused),
        "connection: host": (post(f"Connection: host\r\nContent-Length: {n}\r\n", body), refused),
        "content-length with transfer-encoding": (
            post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + body), refused),
        "differing content-lengths": (post(f"Content-Length: 0\r\nContent-Length: {n}\r\n", body), refused),
        "repeated content-length": (post(f"Content-Length: {n}\r\nContent-Length: {n}\r\n", body), refused),
        "content-length list": (post(f"Content-Length: 0, {n}\r\n", body), refused),
        "signed content-length": (post(f"Content-Length: +{n}\r\n", body), refused),
        "obs-fold": (post(f"X-A: b\r\n Content-Length: {n}\r\n", body), refused),
        "space before colon": (post(f"Content-Length : {n}\r\n", body), refused),
        "bad field name": (post(f"X A: b\r\nContent-Length: {n}\r\n", body), refused),
        "control char in value": (post(f"X-A: b\x01c\r\nContent-Length: {n}\r\n", body), refused),
        "bare CR in value": (post(f"X-A: b\rContent-Length: {n}\r\n", body), refused),
        "bare LF line end": (
            f"POST /post HTTP/1.1\nHost: x\nContent-Length: {n}\n\n".encode() + body, refused),
        "transfer-encoding gzip, chunked": (post("Transfer-Encoding: gzip, chunked\r\n", chunked(body)), {400, 501}),
        "transfer-encoding chunked, gzip": (post("Transfer-Encoding: chunked, gzip\r\n", body), {400, 501}),
        "transfer-encoding in HTTP/1.0": (post("Transfer-Encoding: chunked\r\n", chunked(body), "1.0"), refused),
        "duplicate host": (post(f"Host: y\r\nContent-Length: {n}\r\n", body), refused),
        "negative chunk size": (post("Transfer-Encoding: chunked\r\n", b"-1\r\n" + body), refused),
        "0x chunk size": (post("Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n" + body), refused),
        "LF in chunk extension": (
            post("Transfer-Encoding: chunked\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n" + body), refused),
    }
    return attempts


@pytest.mark.slow
async def test_smuggled_requests_never_reach_a_backend(backends, balance) -> None:
    back = (await backends(1, first=60))[0]
    proc = await balance({"pools": {"web": {"backends": [back.address]}}})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        for name, (data, refused) in smuggling_attempts().items():
            got = await exchange(proc.address, data)
            codes = statuses(got)
            assert codes and codes[0] in refused, f"{name}: {got[:200]!r}"
            assert len(codes) == 1, f"{name}: answered twice: {got!r}"
        # Normal traffic still gets its own responses, on fresh and reused connections.
        for i in range(10):
            async with s.get(f"http://{proc.listen}/after/{i}") as r:
                assert (await r.json(content_type=None))["path"] == f"/after/{i}"
        paths = await backend_paths(s, back)
    assert not [p for p in paths if "smuggled" in p], paths
    # Every refusal is one log line, and not one traceback.
    log = proc.stop()
    assert "Traceback" not in log, log
    assert log.count("event=bad_request") == len(smuggling_attempts()), log


@pytest.mark.slow
async def test_malformed_requests_are_one_log_line_each(backends, balance) -> None:
    back = (await backends(1, first=61))[0]
    proc = await balance({"pools": {"web": {"backends": [back.address]}}})
    garbage = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
               b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
               b"BREW / HTTP/9.9\r\n\r\n",
               b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",
               b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
    for data in garbage:
        got = await exchange(proc.address, data)
        assert statuses(got)[:1] in ([400], [431], [505], [501]), got[:200]
    log = proc.stop()
    lines = [line for line in log.splitlines() if "event=bad_request" in line]
    assert len(lines) == len(garbage), log
    assert "Traceback" not in log and "aiohttp.server" not in log, log


# ---------------------------------------------------------------- backends that cannot be framed


class RawBackend:
    """A backend that answers every request head with fixed bytes (then maybe more, later)."""

    def __init__(self, reply: bytes, late: bytes = b"") -> None:
        self.reply = reply
        self.late = late
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                writer.write(self.reply)
                await writer.drain()
                if self.late:
                    await asyncio.sleep(0.2)
                    writer.write(self.late)
                    await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def raw_backend(reply: bytes, late: bytes = b"") -> AsyncIterator[tuple[RawBackend, str]]:
    host = f"{NET}.62"
    port = free_port(host)
    backend = RawBackend(reply, late)
    server = await asyncio.start_server(backend.serve, host, port)
    try:
        yield backend, f"{host}:{port}"
    finally:
        server.close()


UNFRAMEABLE = {
    "negative chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhello\r\n0\r\n\r\n",
    "0x chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "underscore chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_f\r\nhello\r\n0\r\n\r\n",
    "differing content-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n c\r\n\r\nhello",
    "101 to a plain request": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNFRAMEABLE))
async def test_unframeable_responses_are_502_and_never_hang_a_worker(balance, name: str) -> None:
    async with raw_backend(UNFRAMEABLE[name]) as (_, address):
        proc = await balance({"retries": 0, "pools": {"web": {"backends": [address]}}})
        started = time.monotonic()
        got = await exchange(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait=5)
        if b"chunk size" in name.encode():
            # The head went out before the body went wrong: the client sees it cut,
            # never a complete chunked body.
            assert statuses(got) == [200] and not got.endswith(b"0\r\n\r\n") and b"hello" not in got, got
        else:
            assert statuses(got) == [502], got
        assert time.monotonic() - started < 3
        # The worker still answers (a spinning loop would answer nothing, not even the admin API).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s, \
                s.get(f"http://{proc.admin}/v1/load") as r:
            assert r.status == 200


@pytest.mark.slow
async def test_extra_and_late_responses_never_reach_the_next_client(balance) -> None:
    # Each answer is followed, 0.2 s later, by a second response nobody asked for: what a
    # backend sends when it read a body as a second request. Pooled, it would be the
    # next client's answer.
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ngenuin"
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSMUGGL"
    async with raw_backend(ok, late=evil) as (backend, address):
        proc = await balance({"pools": {"web": {"backends": [address]}}})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            for _ in range(6):
                async with s.get(f"http://{proc.listen}/") as r:
                    assert await r.read() == b"genuin"
                await asyncio.sleep(0.3)
        assert backend.requests == 6
    async with raw_backend(ok + evil) as (backend, address):  # glued to the first one
        proc = await balance({"pools": {"web": {"backends": [address]}}})
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            for _ in range(6):
                async with s.get(f"http://{proc.listen}/") as r:
                    assert await r.read() == b"genuin"


# ---------------------------------------------------------------- slow clients and slow backends

SLOW = {
    "timeouts": {"connect": 1, "read": 1.5, "idle": 30, "request_head": 1, "request_body": 1.5, "response_body": 2},
    "max_clients": 30,
}


async def trickle(address: tuple[str, int], first: bytes, drip: bytes, every: float, until: float) -> bytes:
    """Send `first`, then `drip` every `every` seconds; what came back when the server closed."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(first)
    got = bytearray()
    deadline = time.monotonic() + until
    try:
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                writer.write(drip)
                continue
            if not chunk:
                break
            got += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return bytes(got)


async def in_flight(s: aiohttp.ClientSession, proc: Proc) -> int:
    async with s.get(f"http://{proc.admin}/v1/backends") as r:
        return sum(b["in_flight"] for b in (await r.json())["backends"])


@pytest.mark.slow
async def test_slow_clients_are_cut_and_hold_no_backend(backends, balance) -> None:
    back = (await backends(1, first=63))[0]
    proc = await balance({**SLOW, "pools": {"web": {"max_conns": 2, "backends": [back.address]}}})
    addr = proc.address
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        started = time.monotonic()
        # Slowloris: a head that never ends, one field line at a time.
        head = trickle(addr, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n", 0.2, 8)
        # Slow POSTs: small bodies (read whole before any backend is chosen) ...
        small = [trickle(addr, post("Content-Length: 1000\r\n", b"a"), b"a", 0.2, 8) for _ in range(4)]
        # ... and large ones (streamed, so they hold the backend while they last).
        large = [trickle(addr, post(f"Content-Length: {1 << 20}\r\n", b"a" * 70000), b"a", 0.2, 8)
                 for _ in range(2)]
        attack = asyncio.gather(head, *small, *large)
        await asyncio.sleep(0.5)
        # While they trickle, small slow POSTs hold no backend slot: at most the two large ones.
        assert await in_flight(s, proc) <= 2
        got = await attack
        elapsed = time.monotonic() - started
        assert statuses(got[0]) == [408], got[0]
        for reply in got[1:5]:
            assert statuses(reply) == [408], reply
        for reply in got[5:]:  # cut once the body deadline passed, whatever was sent
            assert statuses(reply) in ([408], [502], [504], []), reply
        assert elapsed < 6, elapsed  # all cut near their deadlines (1 s head, 1.5 s body), not at 8 s
        assert await in_flight(s, proc) == 0
        async with s.get(f"http://{proc.listen}/") as r:
            assert r.status == 200
    log = proc.stop()
    assert "event=request_head_timeout" in log and "event=bad_request" in log and "408" in log
    assert "Traceback" not in log


@pytest.mark.slow
async def test_slow_reader_and_slow_backend_are_cut_at_the_response_deadline(backends, balance) -> None:
    back = (await backends(1, first=64))[0]
    proc = await balance({**SLOW, "pools": {"web": {"max_conns": 2, "backends": [back.address]}}})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        # Slow readers: ask for 64 MiB and read nothing; the backend slot must come back.
        readers = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(*proc.address)
            writer.write(f"GET /big?size={64 << 20} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            readers.append((reader, writer))
        deadline = time.monotonic() + 2
        while await in_flight(s, proc) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with s.get(f"http://{proc.listen}/") as r:
            assert r.status == 503  # both of the backend's slots are held ...
        deadline = time.monotonic() + 5
        while await in_flight(s, proc) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert await in_flight(s, proc) == 0  # ... until the response deadline (2 s) cuts them
        async with s.get(f"http://{proc.listen}/") as r:
            assert r.status == 200
        for _, writer in readers:
            writer.close()

        # A backend trickling a body (one line every 0.3 s for 30 s) is cut at 2 s.
        started = time.monotonic()
        got = await exchange(proc.address, b"GET /stream?chunks=100&gap=0.3 HTTP/1.1\r\nHost: x\r\n\r\n", wait=8)
        assert statuses(got) == [200] and b"chunk 0" in got and b"chunk 99" not in got
        assert time.monotonic() - started < 4
        # A backend that never answers: 504 after the read timeout.
        async with s.get(f"http://{proc.listen}/slow?s=5") as r:
            assert r.status == 504
    log = proc.stop()
    assert "event=response_cut" in log and "Traceback" not in log


@pytest.mark.slow
async def test_client_connections_per_worker_are_capped(backends, balance) -> None:
    back = (await backends(1, first=65))[0]
    proc = await balance({**SLOW, "timeouts": {**SLOW["timeouts"], "request_head": 5},
                          "pools": {"web": {"backends": [back.address]}}})
    idle = [await asyncio.open_connection(*proc.address) for _ in range(30)]
    await asyncio.sleep(0.2)
    got = await exchange(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", wait=2)
    assert statuses(got) == [503] and got.endswith(b"\r\n\r\n"), got
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.3)
    got = await exchange(proc.address, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert statuses(got) == [200]
    assert "event=client_limit max_clients=30" in proc.stop()


# ---------------------------------------------------------------- sticky cookies across workers


@pytest.mark.slow
async def test_sticky_cookie_is_honoured_by_every_worker(backends, balance) -> None:
    backs = await backends(2, first=66)
    proc = await balance({"pools": {"web": {"sticky": True, "backends": [b.address for b in backs]}}}, workers=2)
    async with aiohttp.ClientSession() as s, s.get(f"http://{proc.listen}/") as r:
        cookie = r.cookies["geodns_sticky"].value
        pinned = r.headers["X-Backend"]
    seen: Counter[str] = Counter()
    for _ in range(24):  # a new connection each time: SO_REUSEPORT spreads them over both workers
        jar = aiohttp.DummyCookieJar()
        async with aiohttp.ClientSession(cookie_jar=jar) as s, \
                s.get(f"http://{proc.listen}/", headers={"Cookie": f"geodns_sticky={cookie}"}) as r:
            seen[r.headers["X-Backend"]] += 1
            assert "geodns_sticky" not in r.cookies  # a genuine cookie is not replaced
    assert seen == {pinned: 24}
    async with aiohttp.ClientSession() as s, s.get(f"http://{proc.admin}/v1/workers") as r:
        rates = [w["request_rate"] for w in (await r.json())["workers"]]
    assert len(rates) == 2 and all(rate > 0 for rate in rates), rates  # both workers took some
