"""`geodns balance --workers N`: N proxy processes behind one admin port.

Each worker is a whole `Balancer` (routing, choosers, active and passive
checks, drain) that binds the listen addresses with SO_REUSEPORT, so the
kernel spreads client connections over the workers. The parent process binds
nothing on the data path: it owns the admin port (the same routes as one
process, `admin.admin_app`), asks every worker over a
private socket pair (one JSON line each way) and merges the answers:

- `/v1/load`: in-flight requests and request rate are summed over workers;
  backend counts and capacity are the most any worker sees (workers probe on
  their own, so for a probe interval they may disagree).
- `/v1/backends`: in-flight and trips summed per backend.
- `/metrics`: each worker sends its collected metric families; counters and
  histograms are summed, `backend_up` and reload counts are the maximum over
  workers (each worker reloads the same file), and prometheus_client writes
  the text.
- drain, undrain and reload go to every worker.

What stays per worker, by design: choosers (round robin turns, least-conn
counts, consistent-hash bounds) and circuit breakers see that worker's
traffic only, as with nginx workers or HAProxy `nbproc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from prometheus_client import Metric, generate_latest

from geodns.balance import config as config_mod
from geodns.balance.admin import admin_app
from geodns.balance.config import BalancerConfig
from geodns.balance.metrics import Collected, Family
from geodns.serverlog import ServerLog

log = logging.getLogger("geodns.balance")

RESPAWN_DELAY = 1.0
"""Seconds before a worker that died is started again."""
MAX_OVER_WORKERS = frozenset(("geodns_balance_backend_up", "geodns_balance_reloads_total"))
"""Samples every worker reports about the same thing: merged by max, not sum."""


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------ merging (pure)


def merge_load(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One region report from the workers' `/v1/load` bodies."""
    first = reports[0]
    in_flight = sum(r["in_flight"] for r in reports)
    capacity = max(r["capacity"] for r in reports)
    utilisation = 1.0 if capacity == 0 else min(1.0, in_flight / capacity)
    return {
        "region": first["region"],
        "healthy_backends": max(r["healthy_backends"] for r in reports),
        "total_backends": max(r["total_backends"] for r in reports),
        "draining_backends": max(r["draining_backends"] for r in reports),
        "capacity": capacity,
        "in_flight": in_flight,
        "utilisation": round(utilisation, 4),
        "request_rate": round(sum(r["request_rate"] for r in reports), 3),
        "saturated": utilisation > first["saturation"],
        "saturation": first["saturation"],
        "generation": min(r["generation"] for r in reports),
        "workers": len(reports),
    }


def merge_backends(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One `/v1/backends` body: per backend, in-flight and trips summed; state from the first worker."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for answer in answers:
        for row in answer["backends"]:
            key = (row["pool"], row["backend"])
            seen = rows.get(key)
            if seen is None:
                rows[key] = dict(row)
            else:
                seen["in_flight"] += row["in_flight"]
                seen["trips"] += row["trips"]
    for row in rows.values():
        if row["state"] in ("draining", "drained"):
            row["state"] = "draining" if row["in_flight"] else "drained"
    return {"generation": min(a["generation"] for a in answers), "backends": list(rows.values())}


def merge_metrics(per_worker: Iterable[list[Family]]) -> list[Metric]:
    """One set of metric families from every worker's collected families: samples with
    equal labels added up, except `_created` (the earliest) and MAX_OVER_WORKERS (the
    largest). prometheus_client writes the text (`Collected`), escaping included."""
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for worker in per_worker:
        for family in worker:
            name = family["name"]
            if name not in merged:
                merged[name] = (Metric(name, family["help"], family["type"], family["unit"]), {})
            samples = merged[name][1]
            for sample, labels, value in family["samples"]:
                key = (sample, tuple(sorted(labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = value
                elif sample.endswith("_created"):
                    samples[key] = min(old, value)
                elif sample in MAX_OVER_WORKERS:
                    samples[key] = max(old, value)
                else:
                    samples[key] = old + value
    out = []
    for metric, samples in merged.values():
        for (sample, labels), value in samples.items():
            metric.add_sample(sample, dict(labels), value)
        out.append(metric)
    return out


# ------------------------------------------------------------------ worker side


async def serve_worker(config: BalancerConfig, path: str, fd: int, index: int) -> int:
    """Run one worker: a Balancer without admin port, answering the parent on `fd`."""
    from geodns.balance.server import Balancer

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    # The parent's first line: the balancer's sticky key, the same for every worker
    # (and for a respawned one), so that a cookie set by one is honoured by all.
    hello = json.loads(await asyncio.wait_for(reader.readline(), 30) or b"{}")
    key = hello.get("sticky_key")
    worker_config = replace(config, admin=replace(config.admin, listen=None))  # the parent serves it
    balancer = Balancer(worker_config, path, reuse_port=True, sticky_key=key.encode() if key else None)
    await balancer.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the parent orders reloads
    writer.write(b'{"ready": true}\n')
    await writer.drain()

    async def answer() -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            writer.write(json.dumps(await _worker_op(balancer, msg)).encode() + b"\n")
            await writer.drain()
        stop.set()  # the parent is gone: finish and exit

    link = asyncio.create_task(answer())
    try:
        await stop.wait()
    finally:
        link.cancel()
        await balancer.stop()
        writer.close()
    return 0


async def _worker_op(balancer: Any, msg: dict[str, Any]) -> dict[str, Any]:
    """One admin call from the parent, answered by this worker's own `Service` methods."""
    op = msg.get("op")
    if op == "load":
        return await balancer.load_json()
    if op == "backends":
        return await balancer.backends_json()
    if op == "metrics":
        return {"families": balancer.metric_families()}
    if op == "drain":
        try:
            return await balancer.drain_json(msg["pool"], msg["backend"], msg["on"])
        except KeyError as exc:
            return {"error": exc.args[0]}
    if op == "reload":
        return await balancer.reload_json()
    return {"error": f"unknown op {op!r}"}


# ------------------------------------------------------------------ parent side


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        async with self.lock:
            self.writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await self.writer.drain()
            line = await asyncio.wait_for(self.reader.readline(), 10)
        if not line:
            raise ConnectionError(f"worker {self.index} gone")
        return json.loads(line)


class Supervisor:
    """The parent: starts N workers, serves the merged admin API, forwards signals."""

    def __init__(self, config: BalancerConfig, path: str, count: int, argv: list[str]) -> None:
        self.config = config
        self.path = path
        self.count = count
        self.argv = argv
        """Extra arguments for every worker (log level, event loop)."""
        self.workers: dict[int, Worker] = {}
        self.sticky_key = secrets.token_hex(32)
        """The key every worker signs sticky cookies with when the config sets no sticky_secret."""
        self.stopping = False
        self._runner: web.AppRunner | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    async def _spawn(self, index: int) -> Worker:
        parent_end, child_end = socket.socketpair()
        cmd = [sys.executable, "-m", "geodns.balance", "--config", self.path, *self.argv,
               "--worker", f"{index}:{child_end.fileno()}"]
        proc = subprocess.Popen(cmd, pass_fds=(child_end.fileno(),))
        child_end.close()
        reader, writer = await asyncio.open_connection(sock=parent_end)
        writer.write(json.dumps({"sticky_key": self.sticky_key}).encode() + b"\n")
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            proc.wait()
            raise RuntimeError(f"worker {index} exited with {proc.returncode} before it was ready")
        worker = Worker(index, proc, reader, writer)
        self.workers[index] = worker
        watcher = asyncio.create_task(self._watch(worker))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        _log("worker_started", worker=index, pid=proc.pid)
        return worker

    async def _watch(self, worker: Worker) -> None:
        code = await asyncio.to_thread(worker.proc.wait)
        if self.stopping:
            return
        _log("worker_exited", worker=worker.index, pid=worker.proc.pid, code=code, action="respawn")
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        worker.writer.close()
        await asyncio.sleep(RESPAWN_DELAY)
        if not self.stopping:
            try:
                await self._spawn(worker.index)
            except (RuntimeError, TimeoutError, OSError) as exc:
                log.error("event=worker_respawn_failed worker=%d error=%r", worker.index, str(exc))

    async def start(self) -> None:
        try:
            await asyncio.gather(*(self._spawn(i) for i in range(self.count)))
        except BaseException:
            await self.stop()
            raise
        listen = self.config.admin.listen
        if listen is not None:
            self._runner = web.AppRunner(admin_app(self), access_log=None, logger=ServerLog(log))
            await self._runner.setup()
            await web.TCPSite(self._runner, listen.host, listen.port).start()
        _log("started", workers=self.count, admin=listen,
             listen=",".join(map(str, self.config.listen)))

    async def stop(self) -> None:
        """Graceful: every worker stops accepting and finishes its in-flight requests."""
        self.stopping = True
        _log("stopping", workers=len(self.workers))
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = self.config.drain_timeout + 10
        codes = await asyncio.gather(
            *(asyncio.to_thread(w.proc.wait, deadline) for w in self.workers.values()), return_exceptions=True
        )
        for w, code in zip(self.workers.values(), codes, strict=True):
            if isinstance(code, BaseException):
                w.proc.kill()
                w.proc.wait()
            w.writer.close()
        for task in self._watchers:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        _log("stopped")

    async def reload(self) -> dict[str, Any]:
        answers = await self._all("reload")
        ok = all(a.get("reloaded") for a in answers)
        if ok:
            with contextlib.suppress(config_mod.ConfigError):
                new = config_mod.load(self.path)
                # Listen addresses change only on restart, as in one process.
                self.config = replace(new, listen=self.config.listen,
                                      admin=replace(new.admin, listen=self.config.admin.listen))
        return {"reloaded": ok, "generation": min(a["generation"] for a in answers)}

    async def _ask(self, op: str, **args: Any) -> list[tuple[Worker, dict[str, Any]]]:
        """Every live worker's answer; a worker that died meanwhile is left out."""
        workers = list(self.workers.values())
        answers = await asyncio.gather(*(w.call(op, **args) for w in workers), return_exceptions=True)
        got = [(w, a) for w, a in zip(workers, answers, strict=True) if not isinstance(a, BaseException)]
        for w, a in zip(workers, answers, strict=True):
            if isinstance(a, Exception):
                log.warning("event=worker_unanswered worker=%d op=%s error=%r", w.index, op, str(a))
            elif isinstance(a, BaseException):
                raise a
        if not got:
            raise web.HTTPServiceUnavailable(text='{"error": "no worker answered"}', content_type="application/json")
        return got

    async def _all(self, op: str, **args: Any) -> list[dict[str, Any]]:
        return [a for _, a in await self._ask(op, **args)]

    # ---------------------------------------------------------- admin API (admin.Service)

    @property
    def admin_token(self) -> str | None:
        return self.config.admin.token

    async def load_json(self) -> dict[str, Any]:
        return merge_load(await self._all("load"))

    async def workers_json(self) -> dict[str, Any]:
        rows = [
            {"worker": w.index, "pid": w.proc.pid, "in_flight": a["in_flight"], "request_rate": a["request_rate"]}
            for w, a in await self._ask("load")
        ]
        return {"workers": sorted(rows, key=lambda r: r["worker"])}

    async def backends_json(self) -> dict[str, Any]:
        return merge_backends(await self._all("backends"))

    async def metrics_text(self) -> bytes:
        return generate_latest(Collected(merge_metrics(a["families"] for a in await self._all("metrics"))))

    async def drain_json(self, pool: str, backend: str, on: bool) -> dict[str, Any]:
        answers = await self._all("drain", pool=pool, backend=backend, on=on)
        if "error" in answers[0]:
            raise KeyError(answers[0]["error"])
        row = dict(answers[0])
        row["in_flight"] = sum(a["in_flight"] for a in answers)
        if row["state"] in ("draining", "drained"):
            row["state"] = "draining" if row["in_flight"] else "drained"
        _log("drain" if on else "undrain", pool=row["pool"], backend=row["backend"], in_flight=row["in_flight"],
             cause="admin", workers=len(answers))
        return row

    async def reload_json(self) -> dict[str, Any]:
        return await self.reload()


def _log(event: str, **fields: object) -> None:
    log.info(" ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())]))
