"""`--workers N`: data-plane processes sharing the DNS port with SO_REUSEPORT.

The control plane runs once, in the parent. Each worker is a fresh
interpreter (`python -m geodns.dns.workers FD`, not a fork of a process
running an event loop) that talks to the parent over one socketpair:

    parent -> worker   ("snapshot", SnapshotState)   on start and on every publish
                       ("stop", None)
    worker -> parent   ("ready", pid) | ("error", text) | ("stats", Stats.export())

A SnapshotState is what `build_snapshot` needs, minus the GeoIP reader: the
zones, latency tables, verdicts and utilisation are small (a few kB pickled);
each worker maps the parent's sealed in-memory copy of the GeoIP file
(`GeoDatabase.source`), so the copy is made once per node, not per worker. Workers push their
cumulative counters once a second (and when they stop); `WorkerPool.stats()`
merges the latest of each, in `Stats.export()` shape, for /metrics.

The kernel spreads UDP queries over the workers' sockets by a hash of the
client's address and port, and TCP connections likewise; each worker has its
own answer cache (per snapshot, as in one process). Response rate limiting
holds for the node: the workers share one table in memory (a memfd the parent
makes and passes down) and one hash seed, or each has rate / N
(`geodns.dns.rrl`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from geodns.dns import cookies
from geodns.dns.explain import QueryLog
from geodns.dns.rrl import RRLSettings, create_shared, limiter_for_worker
from geodns.dns.server import Listen, SnapshotRef, cookie_trusted, start_listeners
from geodns.dns.snapshot import Snapshot, build_snapshot
from geodns.dns.sources import SOURCES, SOURCES_ENV
from geodns.dns.stats import LATENCY_BUCKETS, Stats

log = logging.getLogger("geodns.workers")

STATS_INTERVAL = 1.0
"""Seconds between workers' counter pushes: /metrics is at most this stale."""
START_TIMEOUT = 60.0
"""Opening a large GeoIP file and importing is ~1 s; binding fails fast."""


SAME_MEASURED = "same"
"""`SnapshotState.measured` when it has not changed since the last state sent."""


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """Everything a worker needs to rebuild the parent's Snapshot, by value (pickled)."""

    generation: int
    zones: tuple
    latency_tables: dict
    verdicts: dict
    utilisation: dict
    cache_size: int
    geoip_path: str | None
    geoip_identity: Any
    """The file the parent opened (device, inode, size, mtime): a worker reopens only when it changes."""
    geoip_source: str | None = None
    """The parent's open descriptor of that file (`GeoDatabase.source`): what a worker opens, so
    that it reads the parent's file even if the path has been given another one since."""
    measured: Any = None
    """`geodns.steer.measured.Measured`: measured RTTs, ranked (about 100 bytes a network)."""

    @classmethod
    def of(cls, snap: Snapshot) -> SnapshotState:
        geo = snap.geo
        return cls(
            generation=snap.generation,
            zones=tuple(cz.zone for cz in snap.zones.values()),
            latency_tables={origin: cz.latency for origin, cz in snap.zones.items() if cz.latency is not None},
            verdicts=dict(snap.verdicts),
            utilisation=dict(snap.utilisation),
            cache_size=snap.cache.max_entries,
            geoip_path=geo.path if geo is not None else None,
            geoip_identity=geo.identity if geo is not None else None,
            geoip_source=geo.source if geo is not None else None,
            measured=snap.measured,
        )


def merge_exports(exports: list[dict]) -> dict:
    """Sum several `Stats.export()` dicts into one of the same shape."""
    answers: Counter = Counter()
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    latency_sum = 0.0
    hits = misses = 0
    rrl: Counter = Counter()
    dnssec: dict[str, tuple] = {}
    for export in exports:
        for label, qtype, transport, n in export.get("answers", ()):
            answers[(tuple(label), qtype, transport)] += n
        for i, n in enumerate(export.get("latency", ())):
            latency[i] += n
        latency_sum += export.get("latency_sum", 0.0)
        hits += export.get("cache_hits", 0)
        misses += export.get("cache_misses", 0)
        for action, cls, n in export.get("rrl", ()):
            rrl[(action, cls)] += n
        for zone, (expires, made, entries) in export.get("dnssec", {}).items():
            was = dnssec.get(zone, (None, 0, 0))
            soonest = min((e for e in (expires, was[0]) if e is not None), default=None)
            dnssec[zone] = (soonest, was[1] + made, was[2] + entries)
    return {
        "answers": [(label, qtype, transport, n) for (label, qtype, transport), n in answers.items()],
        "latency": latency,
        "latency_sum": latency_sum,
        "cache_hits": hits,
        "cache_misses": misses,
        "rrl": [(action, cls, n) for (action, cls), n in rrl.items()],
        "dnssec": dnssec,
    }


class _Worker:
    __slots__ = ("index", "proc", "conn", "ready", "last_stats", "pid")

    def __init__(self, index: int, proc: subprocess.Popen, conn: Connection):
        self.index = index
        self.proc = proc
        self.conn = conn
        self.pid = proc.pid
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.last_stats: dict | None = None


class WorkerPool:
    """N data-plane processes fed by one controller. Use from the parent's event loop:

        pool = WorkerPool(controller, listens, n, query_log)
        await pool.start()      # raises OSError if a worker cannot bind
        pool.stats()            # merged Stats.export() of all workers, for /metrics
        await pool.stop()

    `controller` is duck-typed: `.snapshot` (the current Snapshot) and
    `.subscribers` (called with every new Snapshot), as control.Controller has.
    n <= 0 means one worker per core.
    """

    def __init__(
        self,
        controller: Any,
        listens: list[Listen],
        n: int = 0,
        query_log: QueryLog | None = None,
        rrl: RRLSettings | None = None,
    ):
        self.controller = controller
        self.listens = list(listens)
        self.n = n if n > 0 else (os.cpu_count() or 1)
        self.query_log = query_log
        self.workers: list[_Worker] = []
        self._retired: list[dict] = []
        """Last counters of workers that died and were replaced, so totals never go down."""
        self._stopping = False
        self._state: SnapshotState | None = None
        self.rrl = rrl if rrl is not None and rrl.enabled else None
        self._rrl_table = create_shared(self.rrl) if self.rrl is not None and self.rrl.share == "shared" else None
        """One rate-limiting table in shared memory for every worker (replacements included)."""
        self._hash_seed = str(int.from_bytes(os.urandom(4), "big"))
        """Every worker hashes with this seed, so a rate-limiting unit has one slot in the shared table."""

    async def start(self) -> None:
        self._state = SnapshotState.of(self.controller.snapshot)
        self.controller.subscribers.append(self._publish)
        try:
            for index in range(self.n):
                self.workers.append(self._spawn(index))
            await asyncio.wait_for(asyncio.gather(*(w.ready for w in self.workers)), START_TIMEOUT)
        except BaseException:
            await self.stop()
            raise
        log.info("workers started n=%d pids=%s", self.n, ",".join(str(w.pid) for w in self.workers))

    def _spawn(self, index: int) -> _Worker:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = logging.getLogger()
        formatter = root.handlers[0].formatter if root.handlers else None
        try:  # the parent's log line format (text or JSON), when it can travel
            pickle.dumps(formatter)
        except Exception:  # noqa: BLE001 - e.g. a test harness's formatter: use the default
            formatter = None
        setup = pickle.dumps(
            {
                "index": index,
                "listens": self.listens,
                "query_log": self.query_log,
                "log_level": root.level,
                "log_formatter": formatter,
                "query_log_level": logging.getLogger("geodns.query").level,
                "rrl": self.rrl,
                "rrl_table": self._rrl_table,
                "workers": self.n,
                "cookie_secrets": cookies.active(),  # one node, one secret
            }
        )
        shared = [self._rrl_table.fd] if self._rrl_table is not None else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "geodns.dns.workers", str(child_sock.fileno())],
            pass_fds=[child_sock.fileno(), *shared],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": self._hash_seed},
        )
        child_sock.close()
        conn = Connection(parent_sock.detach())
        worker = _Worker(index, proc, conn)
        conn.send(("setup", setup))
        conn.send(("snapshot", self._state))
        asyncio.get_running_loop().add_reader(conn.fileno(), self._on_message, worker)
        _keep_blocking(conn)
        return worker

    def _on_message(self, worker: _Worker) -> None:
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            self._lost(worker)
            return
        if kind == "stats":
            taken = value.pop("sources", None)
            if taken:
                SOURCES.merge(*taken)
            worker.last_stats = value
        elif kind == "ready":
            if not worker.ready.done():
                worker.ready.set_result(value)
        elif kind == "error" and not worker.ready.done():
            worker.ready.set_exception(OSError(f"worker {worker.index}: {value}"))

    def _lost(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(worker.conn.fileno())
        worker.conn.close()
        if not worker.ready.done():
            worker.ready.set_exception(OSError(f"worker {worker.index} exited before it was ready"))
            return
        if self._stopping or worker not in self.workers:
            return
        code = worker.proc.wait()
        log.error("worker exited unexpectedly index=%d pid=%d code=%s; starting a new one", worker.index, worker.pid, code)
        if worker.last_stats:
            self._retired.append(worker.last_stats)
        replacement = self._spawn(worker.index)
        self.workers[self.workers.index(worker)] = replacement

    def _publish(self, snapshot: Snapshot) -> None:
        """Controller subscriber: send the new state to every worker (a few kB each)."""
        previous = self._state
        self._state = SnapshotState.of(snapshot)
        state = self._state
        if previous is not None and state.measured is not None and state.measured is previous.measured:
            # Measured RTTs (up to ~0.5 MB pickled) go only when they change; new workers get them whole.
            state = replace(state, measured=SAME_MEASURED)
        for worker in self.workers:
            try:
                worker.conn.send(("snapshot", state))
            except OSError as exc:  # a dead worker is replaced when its pipe reports EOF
                log.warning("cannot send snapshot to worker index=%d: %s", worker.index, exc)

    def stats(self) -> dict:
        """Merged counters of all workers, `Stats.export()` shape (at most STATS_INTERVAL old)."""
        return merge_exports(self._retired + [w.last_stats for w in self.workers if w.last_stats])

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        with contextlib.suppress(ValueError):
            self.controller.subscribers.remove(self._publish)
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.conn.send(("stop", None))
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            while worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                # keep reading: the final counters arrive just before the worker exits
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(worker.conn.fileno())
            with contextlib.suppress(OSError, EOFError):
                while worker.conn.poll():
                    kind, value = worker.conn.recv()
                    if kind == "stats":
                        worker.last_stats = value
            worker.conn.close()
        if self._rrl_table is not None:
            with contextlib.suppress(OSError):
                os.close(self._rrl_table.fd)
            self._rrl_table = None


# ---------------------------------------------------------------- the worker side


class _Replica:
    """A worker's copy of the parent's snapshot, rebuilt from each SnapshotState."""

    def __init__(self) -> None:
        self.geo = None
        self.geo_key: tuple | None = None
        self.ref: SnapshotRef | None = None

    def apply(self, state: SnapshotState) -> Snapshot:
        from geodns.geo import GeoDatabaseError

        key = (state.geoip_path, state.geoip_identity)
        if state.geoip_path is None:
            self.geo, self.geo_key = None, key
        elif key != self.geo_key:
            # The parent's copy (shared memory), else the path. The file may have been
            # replaced again since the parent opened it; if what is there now is
            # unreadable, keep serving the reader we have (as the parent does).
            try:
                self.geo, self.geo_key = _open_geo(state), key
            except GeoDatabaseError as exc:
                if self.geo is None:
                    raise
                log.error("worker keeps its GeoIP reader: %s", exc)
        snapshot = build_snapshot(
            state.generation,
            list(state.zones),
            self.geo,
            state.verdicts,
            state.latency_tables,
            state.utilisation,
            state.cache_size,
            # Keeps the answer cache when no answer could differ (health republishes ~1/s).
            previous=self.ref.snapshot if self.ref is not None else None,
            measured=self.ref.snapshot.measured if state.measured == SAME_MEASURED and self.ref is not None else state.measured,
        )
        if self.ref is None:
            self.ref = SnapshotRef(snapshot)
        else:
            self.ref.snapshot = snapshot  # one reference swap, as in the parent
        return snapshot


def _open_geo(state: SnapshotState):
    """The parent's GeoIP file: through its descriptor when it has one (the path may name
    another file by now: a worker starting while the file is replaced must not read that one,
    nor fail the node on junk), else by path."""
    from geodns.geo import GeoDatabase, GeoDatabaseError

    if state.geoip_source is not None:
        try:
            return GeoDatabase(state.geoip_source)
        except GeoDatabaseError as exc:  # the parent has closed it since: the path is all there is
            log.debug("worker opens the GeoIP file by path: %s", exc)
    return GeoDatabase(state.geoip_path)


async def _worker(conn: Connection) -> int:
    kind, setup = conn.recv()
    setup = pickle.loads(setup)
    SOURCES.enabled = os.environ.get(SOURCES_ENV) == "1"
    _worker_logging(setup)
    cookies.configure(setup["cookie_secrets"])
    index = setup["index"]
    replica = _Replica()
    kind, state = conn.recv()
    try:
        replica.apply(state)
    except Exception as exc:  # noqa: BLE001 - report, do not hang the parent
        conn.send(("error", f"cannot build the snapshot: {exc}"))
        return 1
    stats = Stats()
    rrl = None
    if setup.get("rrl") is not None:
        rrl = limiter_for_worker(
            setup["rrl"], setup.get("workers", 1), setup.get("rrl_table"), trusted=cookie_trusted
        )
    try:
        closers = await start_listeners(
            replica.ref, setup["listens"], query_log=setup["query_log"], reuse_port=True, stats=stats, rrl=rrl
        )
    except OSError as exc:
        conn.send(("error", f"cannot listen: {exc}"))
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    parent = os.getppid()

    def on_message() -> None:
        try:
            kind, value = conn.recv()
        except (EOFError, OSError):
            stop.set()  # the parent is gone: so are we
            return
        if kind == "snapshot":
            try:
                snapshot = replica.apply(value)
            except Exception:  # noqa: BLE001 - keep serving the old snapshot
                log.exception("worker %d: snapshot %d refused, still serving the old one", index, value.generation)
            else:
                log.debug("worker %d: generation %d", index, snapshot.generation)
        elif kind == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_message)
    _keep_blocking(conn)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A HUP to the whole process group (a closed terminal, `kill -HUP -PGID`) is the parent's
    # to act on (it reloads and sends the new snapshot); its default action would end a worker.
    loop.add_signal_handler(signal.SIGHUP, lambda: None)
    conn.send(("ready", os.getpid()))
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATS_INTERVAL)
        export = stats.export()
        if SOURCES.enabled:
            export["sources"] = SOURCES.take()
        with contextlib.suppress(OSError):
            conn.send(("stats", export))
        if os.getppid() != parent:
            break
    for close in closers:
        close()
    return 0


def _keep_blocking(conn: Connection) -> None:
    """Undo what uvloop's add_reader does to the pipe (libuv's poll makes it non-blocking).

    A Connection sends and reads whole messages with blocking I/O: non-blocking, a message
    larger than the socket buffer (~200 kB: the snapshot of a zone of a few thousand names)
    was cut short with EAGAIN, and the worker, reading half of it, took the pipe for closed
    and exited. Blocking, a reader that is woken by the first bytes waits for the rest; the
    event loop only calls it when there is something to read.
    """
    os.set_blocking(conn.fileno(), True)


def _worker_logging(setup: dict) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if setup.get("log_formatter") is not None:
        handler.setFormatter(setup["log_formatter"])
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(setup.get("log_level", logging.INFO))
    logging.getLogger("geodns.query").setLevel(setup.get("query_log_level", logging.WARNING))


def main(argv: list[str]) -> int:
    conn = Connection(int(argv[0]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(_worker(conn))
    return uvloop.run(_worker(conn))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
