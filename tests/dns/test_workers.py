"""WorkerPool: worker processes fed by one controller, over real sockets."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
import time
from pathlib import Path

import pytest
from netutil import async_wait_until

from geodns.control.controller import Controller
from geodns.dns.answer import answer
from geodns.dns.server import Listen
from geodns.dns.stats import Stats
from geodns.dns.workers import SnapshotState, WorkerPool, _Replica, merge_exports
from geodns.steer import Verdict

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.3.7"


def query(qid: int, ecs: str | None = None, prefix: int = 24) -> bytes:
    head = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1)
    qname = b"\x03www\x04gslb\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
    opt = b""
    if ecs is not None:
        data = struct.pack("!HBB", 1, prefix, 0) + socket.inet_aton(ecs)[: (prefix + 7) // 8]
        opt = struct.pack("!HH", 8, len(data)) + data
    return head + qname + b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(opt)) + opt


def _first_a(response: bytes) -> str:
    """The first A record's address (the answers here have one A record right after the question)."""
    pos = 12
    while response[pos]:
        pos += response[pos] + 1
    pos += 5  # root, qtype, qclass
    # owner (a pointer), type, class, ttl, rdlength
    pos += 2 + 2 + 2 + 4 + 2
    return socket.inet_ntoa(response[pos : pos + 4])


def controller() -> Controller:
    c = Controller(str(REPO / "zones" / "example.yaml"), str(REPO / "data" / "geoip-bundle.mmdb"))
    c.start()
    return c


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((HOST, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def test_merge_exports_sums_every_counter():
    a, b = Stats(), Stats()
    label = next(iter(controller().snapshot.zones.values())).zone.origin
    a.cache_hits, b.cache_hits, b.cache_misses = 3, 4, 1
    a.observe_latency(0.0001)
    b.observe_latency_n(0.0001, 5)
    from geodns.dns.stats import AnswerLabel

    key = (AnswerLabel(label, 0, "eu-west", "geo_proximity"), 1, True)
    a.answers[key] += 2
    b.answers[key] += 3
    merged = merge_exports([a.export(), b.export()])
    assert merged["cache_hits"] == 7 and merged["cache_misses"] == 1
    assert sum(merged["latency"]) == 6
    assert [n for *_, n in merged["answers"]] == [5]
    assert set(merged) == set(a.export())


def test_snapshot_state_rebuilds_the_same_answers():
    c = controller()
    state = pickle.loads(pickle.dumps(SnapshotState.of(c.snapshot)))
    assert len(pickle.dumps(state)) < 64_000  # small enough to send on every publish
    replica = _Replica()
    snap = replica.apply(state)
    assert snap.generation == c.snapshot.generation
    for client in ("81.2.69.0", "8.8.8.0", "1.0.16.0", "175.16.199.0", "198.51.100.0"):
        q = query(7, client)
        assert answer(snap, q, "127.0.0.1", time.time(), True, Stats()) == answer(c.snapshot, q, "127.0.0.1", time.time(), True, Stats())
    # the GeoIP reader is reused while the file is the same one, and so is the
    # answer cache while no answer could differ
    geo, cache = replica.geo, snap.cache
    again = replica.apply(SnapshotState.of(c.publish()))
    assert replica.geo is geo and again.cache is cache
    c.admin_verdicts = {"eu-west": Verdict(up=False, forced=True, cause="drained: test")}
    assert replica.apply(SnapshotState.of(c.publish())).cache is not cache


async def ask_udp(port: int, data: bytes, source_port: int = 0) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, source_port))
        s.setblocking(False)
        s.connect((HOST, port))
        await loop.sock_sendall(s, data)
        return await asyncio.wait_for(loop.sock_recv(s, 4096), 2.0)


async def ask_tcp(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(struct.pack("!H", len(data)) + data)
    await writer.drain()
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    response = await reader.readexactly(length)
    writer.close()
    return response


async def test_pool_serves_follows_publishes_and_reports_stats():
    c = controller()
    port = free_port()
    pool = WorkerPool(c, [Listen(HOST, port)], 2)
    await pool.start()
    try:
        assert len(pool.pids()) == 2
        london = query(1, "81.2.69.0")
        # many source ports, so that SO_REUSEPORT's hash reaches both workers
        answers = [await ask_udp(port, london) for _ in range(40)]
        assert {_first_a(r) for r in answers} == {"192.0.2.30"}
        assert _first_a(await ask_tcp(port, london)) == "192.0.2.30"

        c.admin_verdicts = {"eu-west": Verdict(up=False, forced=True, cause="drained: test")}
        c.publish()
        deadline = time.monotonic() + 5
        while True:
            seen = {_first_a(await ask_udp(port, london)) for _ in range(40)}
            if "192.0.2.30" not in seen or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert "192.0.2.30" not in seen, "a worker kept answering from the old snapshot"

        def pushed() -> bool:  # workers push their counters once a second
            merged = pool.stats()
            return sum(n for *_, n in merged["answers"]) >= 81 and sum(merged["latency"]) >= 80

        await async_wait_until(pushed, 10, "the workers' counters in the pool's stats")
        merged = pool.stats()
        assert sum(n for *_, n in merged["answers"]) >= 81
        assert sum(merged["latency"]) >= 80
    finally:
        await pool.stop()
    assert all(w.proc.poll() is not None for w in pool.workers)


async def test_pool_start_fails_when_the_port_is_taken():
    c = controller()
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((HOST, port))  # no SO_REUSEPORT: workers cannot share it
        pool = WorkerPool(c, [Listen(HOST, port)], 1)
        with pytest.raises(OSError):
            await pool.start()
    assert all(w.proc.poll() is not None for w in pool.workers)
