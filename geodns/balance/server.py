"""The balancer: proxy listeners, admin API, health checkers, reload and drain.

One `Balancer` per process. Its proxy handler reads the current `Routes`
(swapped whole on reload), picks a backend with the route's chooser, and
streams the request and response through one shared keep-alive client
session. Everything slow (probes, reloads, drains) runs beside it as tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest

from geodns.balance import config as config_mod
from geodns.balance import sticky
from geodns.balance.active import (
    Check,
    Rules,
    View,
    backend_check,
    next_delay,
    observe,
    probe,
    probe_session,
    takes_traffic,
)
from geodns.balance.admin import admin_app
from geodns.balance.config import Address, BalancerConfig
from geodns.balance.edge import Edge, default_max_clients, refusal
from geodns.balance.metrics import Family, Metrics, families
from geodns.balance.pool import Backend, LoadReport, Pool, Route, build, load_report
from geodns.balance.rate import RateWindow
from geodns.balance.upstream import (
    Client,
    ConnectFailed,
    ReadTimeout,
    Response,
    UpstreamError,
    header_bytes,
)
from geodns.serverlog import ServerLog

log = logging.getLogger("geodns.balance")

# RFC 9110 section 7.6.1: connection-specific fields never cross a proxy.
HOP_BY_HOP = frozenset(
    (
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
    )
)
# RFC 9110 section 9.2.2; safe to send again when they carry no body.
HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {"content-length"}
# What never goes upstream as the client sent it: hop-by-hop fields, the
# forwarding fields this hop restates, and Content-Length: the body's framing
# is ours to state from what we actually send.
UPSTREAM_SKIP = HOP_BY_HOP | frozenset(
    ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via", "content-length")
)
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# Small bodies of known length are read whole and written with the headers in
# one send; larger or unknown-length bodies are streamed chunk by chunk.
SMALL_BODY = 64 * 1024
LINGERING_TIME = 2.0
"""Seconds a connection closed with a request body unread keeps reading (and dropping)
it, so that the client sees our answer rather than a reset (aiohttp's default is 10)."""


class ClientFailed(Exception):
    """The client, not the backend, failed while sending its body: gone, or too slow."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def _read_body(content: aiohttp.StreamReader, deadline: float, size: int = -1) -> bytes:
    """Up to `size` bytes of the request body (-1: all of it), by `deadline` (loop time)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await content.read(size)
    except TimeoutError:
        raise ClientFailed(408, "request body timeout") from None
    except (OSError, HttpProcessingError) as exc:
        raise ClientFailed(400, f"request body: {exc}") from None


class _Body:
    """The client's request body as an async iterator that remembers being started."""

    __slots__ = ("content", "started", "deadline")

    def __init__(self, content: aiohttp.StreamReader, deadline: float) -> None:
        self.content = content
        self.started = False
        self.deadline = deadline
        """Loop time by which the whole body must have arrived."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        while chunk := await _read_body(self.content, self.deadline, SMALL_BODY):
            yield chunk


def _log(event: str, **fields: object) -> None:
    log.info(" ".join([f"event={event}", *(f"{k}={v}" for k, v in fields.items())]))


class Balancer:
    def __init__(
        self,
        config: BalancerConfig,
        config_path: str | Path | None = None,
        *,
        reuse_port: bool = False,
        sticky_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port
        """Bind listeners with SO_REUSEPORT, so that worker processes each own a socket."""
        self.config_path = str(config_path) if config_path else None
        self.metrics = Metrics()
        self.generation = 1
        self.pools, self.routes, self.backends = build(config)
        # Without a configured secret, the key comes from the parent process (one
        # per balancer, so every worker honours every cookie), or is made here.
        self.sticky_key = sticky_key or secrets.token_hex(32).encode()
        self.secret = config.sticky_secret.encode() if config.sticky_secret else self.sticky_key
        self.rate = RateWindow(10)
        self.active_requests = 0
        self.closing = False
        self.addresses: list[Address] = []
        self.admin_address: Address | None = None
        self._session: aiohttp.ClientSession | None = None
        """aiohttp's client, for WebSocket upgrades only."""
        self._upstream: Client | None = None
        """The lean client every other request goes through."""
        self._check_session: aiohttp.ClientSession | None = None
        self._runners: list[web.BaseRunner] = []
        self._checkers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._timeout = self._client_timeout(config)
        self._vias: dict[tuple[int, int], str] = {}
        self.edge: Edge | None = None
        """Client connections, their cap and deadlines (made in start())."""

    # ------------------------------------------------------------ lifecycle

    @staticmethod
    def _client_timeout(config: BalancerConfig) -> aiohttp.ClientTimeout:
        t = config.timeouts
        return aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)

    async def start(self) -> None:
        cfg = self.config
        connector = aiohttp.TCPConnector(
            limit=0, keepalive_timeout=cfg.timeouts.idle, ttl_dns_cache=300, force_close=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        )
        self._check_session = probe_session()
        t = cfg.timeouts
        self._upstream = Client(t.connect, t.read, t.idle)
        self.edge = Edge(cfg.max_clients or default_max_clients(), t.request_head, t.response_body)
        self.edge.start()
        server = self.edge.server(
            self.handle,
            keepalive_timeout=cfg.timeouts.idle,
            auto_decompress=False,
            access_log=None,
            handler_cancellation=True,
            lingering_time=LINGERING_TIME,
        )
        runner = web.ServerRunner(server, shutdown_timeout=cfg.drain_timeout)
        await runner.setup()
        self._runners.append(runner)
        for address in cfg.listen:
            site = web.TCPSite(
                runner, address.host, address.port, backlog=1024, reuse_address=True,
                reuse_port=self.reuse_port or None,
            )
            await site.start()
            self.addresses.append(address)
        if cfg.admin.listen is not None:
            admin_runner = web.AppRunner(admin_app(self), access_log=None, logger=ServerLog(log))
            await admin_runner.setup()
            site = web.TCPSite(admin_runner, cfg.admin.listen.host, cfg.admin.listen.port)
            await site.start()
            self._runners.append(admin_runner)
            self.admin_address = cfg.admin.listen
        self._start_checkers()
        _log(
            "started",
            listen=",".join(map(str, self.addresses)),
            admin=self.admin_address,
            pools=len(self.pools),
            backends=len(self.backends),
        )

    async def stop(self) -> None:
        """Graceful shutdown: stop accepting, let in-flight requests finish within drain_timeout."""
        self.closing = True
        _log("stopping", in_flight=self.active_requests, drain_timeout=self.config.drain_timeout)
        proxy_runner, *others = self._runners
        # The proxy runner's cleanup closes listeners, closes idle keep-alive
        # connections and waits up to shutdown_timeout for running handlers.
        await proxy_runner.cleanup()
        for task in self._checkers.values():
            task.cancel()
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._checkers.values(), *self._retiring, return_exceptions=True)
        if self.edge is not None:
            self.edge.stop()
        for runner in others:
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()
        if self._upstream is not None:
            self._upstream.close()
        if self._check_session is not None:
            await self._check_session.close()
        self._runners.clear()
        _log("stopped")

    # ------------------------------------------------------------ health checks

    def _start_checkers(self) -> None:
        """(Re)start one probe loop per checked backend; views survive a reload."""
        for task in self._checkers.values():
            task.cancel()
        self._checkers.clear()
        for pool in self.pools.values():
            check = pool.config.check
            for b in pool.backends:
                if check is None:
                    b.active = View()  # unchecked: only passive checks apply
                    continue
                task = asyncio.create_task(self._check_loop(b, backend_check(check, b.port)))
                self._checkers[(pool.name, b.key)] = task

    async def _check_loop(self, backend: Backend, check: Check) -> None:
        rules = Rules.from_check(check)
        rng = random.Random()
        while True:
            at = time.monotonic()
            result = await probe(check, backend.host, self._check_session)
            before = takes_traffic(backend.active)
            backend.active = observe(backend.active, result.ok, at, result.detail, rules)
            after = takes_traffic(backend.active)
            if after != before:
                _log(
                    "backend_up" if after else "backend_down",
                    pool=backend.pool, backend=backend.key, cause="active", detail=repr(result.detail),
                )
            await asyncio.sleep(next_delay(check, rng))

    # ------------------------------------------------------------ operations

    def drain(self, pool: str, key: str, on: bool = True) -> Backend:
        backend = self.backends.get((pool, key))
        if backend is None:
            raise KeyError(f"no backend {key} in pool {pool}")
        backend.drain_admin = on
        _log("drain" if on else "undrain", pool=pool, backend=key, in_flight=backend.in_flight, cause="admin")
        return backend

    async def reload(self) -> bool:
        """Re-read the config file; keep running on the old one if it is invalid."""
        if self.config_path is None:
            return False
        try:
            new = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            self.metrics.reloads.labels("error").inc()
            log.error("event=reload_failed error=%r", str(exc))
            return False
        self.apply(new)
        self.metrics.reloads.labels("ok").inc()
        return True

    def apply(self, new: BalancerConfig) -> None:
        """Switch to a new configuration; backends that left it are drained, then dropped."""
        if new.listen != self.config.listen or new.admin.listen != self.config.admin.listen:
            log.warning("event=reload_listen_unchanged detail='listen addresses change only on restart'")
        pools, routes, live = build(new, self.backends)
        gone = [b for k, b in self.backends.items() if k not in live]
        self.config = replace(new, listen=self.config.listen, admin=replace(new.admin, listen=self.config.admin.listen))
        self.secret = new.sticky_secret.encode() if new.sticky_secret else self.sticky_key
        self._timeout = self._client_timeout(new)
        if self._upstream is not None:
            t = new.timeouts
            self._upstream.connect_timeout, self._upstream.read_timeout, self._upstream.idle_timeout = (
                t.connect, t.read, t.idle
            )
        if self.edge is not None:
            self.edge.head_timeout, self.edge.write_timeout = new.timeouts.request_head, new.timeouts.response_body
            self.edge.max_clients = new.max_clients or default_max_clients()
        self._vias = {}
        self.pools, self.routes, self.backends = pools, routes, live
        self.generation += 1
        for backend in gone:
            backend.removed = True
            backend.drain_config = True
            task = asyncio.create_task(self._retire(backend))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._start_checkers()
        _log("reloaded", generation=self.generation, backends=len(live), removed=len(gone))

    async def _retire(self, backend: Backend) -> None:
        deadline = time.monotonic() + self.config.drain_timeout
        while backend.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = backend.in_flight
        for task in list(backend.tasks):
            task.cancel()
        _log("retired", pool=backend.pool, backend=backend.key, cut=left)

    def load(self) -> LoadReport:
        backends = list(self.backends.values())
        now = time.monotonic()
        return load_report(
            backends,
            now,
            self.rate.rate(now),
            sum(b.in_flight for b in backends),
            self.config.saturation,
            self.config.capacity,
            self.config.region,
            self.generation,
        )

    # ------------------------------------------------------------ proxy

    def _hash_key(self, request: web.BaseRequest, route: Route) -> str | None:
        if route.algorithm == "ip_hash":
            return request.remote
        if route.algorithm != "consistent_hash":
            return None
        hk = route.pool.config.hash_key
        if hk.source == "header" and hk.name:
            return request.headers.get(hk.name) or request.remote
        if hk.source == "cookie" and hk.name:
            return request.cookies.get(hk.name) or request.remote
        return request.remote

    def _pinned(self, request: web.BaseRequest, pool: Pool, now: float) -> tuple[Backend | None, str | None]:
        cfg = pool.config.sticky
        if cfg is None:
            return None, None
        key = sticky.verify(self.secret, pool.name, request.cookies.get(cfg.cookie))
        if key is None:
            return None, None
        backend = pool.by_key.get(key)
        if backend is not None and backend.available(now):
            return backend, key
        return None, key

    def _upstream_headers(self, request: web.BaseRequest) -> list[tuple[str, str]]:
        headers = request.headers
        drop = UPSTREAM_SKIP
        conn = headers.get("Connection")
        if conn:
            drop = drop | {t.strip().lower() for t in conn.split(",")}
        out = [(k, v) for k, v in headers.items() if k.lower() not in drop]
        remote = request.remote or ""
        prior = headers.getall("X-Forwarded-For", ())
        out.append(("X-Forwarded-For", ", ".join([*prior, remote]) if prior else remote))
        # Proto and Host are ours to state (a client could forge them); the
        # address chain is appended to, as nginx's $proxy_add_x_forwarded_for does.
        out.append(("X-Forwarded-Proto", request.scheme))
        host = headers.get("Host")
        if host is not None:
            out.append(("X-Forwarded-Host", host))
        via = self._via(request.version)
        prior_via = headers.get("Via")
        out.append(("Via", f"{prior_via}, {via}" if prior_via else via))
        return out

    def _via(self, version: tuple[int, int] | None) -> str:
        """`1.1 geodns`, built once per protocol version."""
        key = (version[0], version[1]) if version else (1, 1)
        via = self._vias.get(key)
        if via is None:
            via = self._vias[key] = f"{key[0]}.{key[1]} {self.config.via}"
        return via

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        self.rate.add(started)
        conn = self.edge.connections.get(request.transport) if self.edge is not None else None  # type: ignore[arg-type]
        if conn is not None:
            conn.head_since = None  # the head is in: its deadline no longer applies
            conn.busy += 1
        try:
            refused = refusal(request.method, request.version, request.headers)
            if refused is not None:
                return self._refuse(request, *refused)
            routes = self.routes
            route = routes.catch_all or routes.match(request.host, request.path)
            if route is None:
                return web.Response(status=404, text="no route\n")
            self.active_requests += 1
            try:
                if request.headers.get("Upgrade", "").lower() == "websocket":
                    return await self._websocket(request, route, started)
                return await self._forward(request, route, started)
            finally:
                self.active_requests -= 1
        finally:
            if conn is not None:
                conn.busy -= 1

    def _refuse(self, request: web.BaseRequest, status: int, reason: str) -> web.Response:
        """A request we will not forward: one log line, the status, and the connection closed
        (what follows on it cannot be trusted to be framed as the client meant)."""
        _log("bad_request", client=request.remote, status=status, method=request.method, error=repr(reason))
        conn = self.edge.connection(request.transport) if self.edge is not None else None
        if conn is not None:
            conn.closing = True
        response = web.Response(status=status, text=f"{status} {reason}\n")
        response.force_close()
        return response

    async def _forward(self, request: web.BaseRequest, route: Route, started: float) -> web.StreamResponse:
        assert self._upstream is not None
        pool = route.pool
        method = request.method
        has_body = request.body_exists
        length = request.content_length
        headers = self._upstream_headers(request)
        body: bytes | _Body | None = None
        chunked = False
        if has_body:
            deadline = asyncio.get_running_loop().time() + self.config.timeouts.request_body
            if length is not None and length <= SMALL_BODY:
                # Whole: one write, replayable after a connect failure, and a slow
                # client holds no backend while it trickles it in.
                try:
                    body = await _read_body(request.content, deadline)
                except ClientFailed as exc:
                    return self._refuse(request, exc.status, str(exc))
                headers.append(("Content-Length", str(len(body))))
            else:
                body = _Body(request.content, deadline)
                if length is None:
                    chunked = True
                    headers.append(("Transfer-Encoding", "chunked"))
                else:
                    headers.append(("Content-Length", str(length)))
        elif length is not None:
            headers.append(("Content-Length", "0"))
        repeatable = method in IDEMPOTENT and not has_body
        if "Host" not in request.headers:
            headers.append(("Host", "-"))  # replaced per backend below
        head = f"{method} {request.raw_path} HTTP/1.1\r\n".encode("utf-8", "surrogateescape") + header_bytes(headers) + b"\r\n"
        bodiless = method == "HEAD"
        hash_key = self._hash_key(request, route)
        pinned, cookie_key = self._pinned(request, pool, started)
        tried: list[str] = []
        status = 502
        last = "no backend"
        attempts = 1 + self.config.retries
        for attempt in range(attempts):
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
                self.metrics.retries.labels(route.label).inc()
            tried.append(backend.key)
            task = backend.take()
            try:
                try:
                    resp = await self._upstream.request(
                        backend.host,
                        backend.port,
                        head if "Host" in request.headers else head.replace(b"Host: -\r\n", backend.host_line, 1),
                        body,
                        chunked,
                        bodiless,
                    )
                except ClientFailed as exc:
                    # The client stopped sending (or is too slow): not the backend's fault.
                    return self._refuse(request, exc.status, str(exc))
                except ConnectFailed as exc:
                    # Never reached the backend: safe to send elsewhere, even a POST,
                    # as long as no byte of its body was consumed.
                    self._failed(backend)
                    status, last = 502, f"connect: {exc}"
                    if isinstance(body, _Body) and body.started:
                        break
                    continue
                except (UpstreamError, OSError) as exc:
                    # May have reached the backend: only idempotent, bodiless requests go again.
                    self._failed(backend)
                    timed_out = isinstance(exc, ReadTimeout)
                    status, last = (504 if timed_out else 502), f"{type(exc).__name__}: {exc}"
                    if repeatable:
                        continue
                    break
                return await self._respond(request, route, backend, resp, cookie_key, started)
            finally:
                backend.give(task)
        self.metrics.observe(route.label, "-", status, time.monotonic() - started)
        _log("proxy_failed", route=route.label, method=method, tried=",".join(tried) or "-", status=status, error=repr(last))
        return web.Response(status=status, text=f"{status} {last}\n")

    def _failed(self, backend: Backend) -> None:
        if backend.breaker.record(False, time.monotonic()):
            self.metrics.trips.labels(backend.pool, backend.key).inc()
            _log("circuit_open", pool=backend.pool, backend=backend.key, cool_off=backend.breaker.cool_off)

    async def _respond(
        self,
        request: web.BaseRequest,
        route: Route,
        backend: Backend,
        resp: Response,
        cookie_key: str | None,
        started: float,
    ) -> web.StreamResponse:
        status = resp.status
        # The whole body, whichever side is slow: a backend trickling it or a
        # client not reading it must not hold a backend slot for longer.
        deadline = asyncio.get_running_loop().time() + self.config.timeouts.response_body
        resp.deadline = deadline
        if backend.breaker.record(status < 500, time.monotonic()):
            self.metrics.trips.labels(backend.pool, backend.key).inc()
            _log("circuit_open", pool=backend.pool, backend=backend.key, cause=f"status_{status}")
        length = resp.length
        small = length is not None and length <= SMALL_BODY
        # A whole body goes out with a Content-Length aiohttp computes itself; a
        # streamed one keeps the backend's only when that is how it was framed.
        drop = HOP_BY_HOP if length is not None and not small else HOP_BY_HOP_AND_LENGTH
        for k, v in resp.headers:
            if k.lower() == "connection":
                drop = drop | {t.strip().lower() for t in v.split(",")}
        via = self._via(resp.version)
        sticky_cfg = route.pool.config.sticky
        try:
            out: web.StreamResponse
            hdrs = CIMultiDict([(k, v) for k, v in resp.headers if k.lower() not in drop])
            prior_via = hdrs.get("Via")
            hdrs["Via"] = f"{prior_via}, {via}" if prior_via else via
            if small:
                data = await resp.read() if length else b""
                out = web.Response(status=status, reason=resp.reason, body=data, headers=hdrs)
            else:
                out = web.StreamResponse(status=status, reason=resp.reason, headers=hdrs)
            if sticky_cfg is not None and cookie_key != backend.key:
                out.set_cookie(
                    sticky_cfg.cookie,
                    sticky.sign(self.secret, route.pool.name, backend.key),
                    max_age=sticky_cfg.max_age,
                    httponly=True,
                    path="/",
                    samesite="Lax",
                )
            if small:
                self.metrics.observe(route.label, backend.key, status, time.monotonic() - started)
                return out
            await out.prepare(request)
            async for chunk in resp.iter_chunks():
                try:
                    async with asyncio.timeout_at(deadline):
                        await out.write(chunk)
                except TimeoutError:
                    raise ClientFailed(408, "response body timeout: the client is not reading") from None
            await out.write_eof()
        except (UpstreamError, ClientFailed) as exc:
            # After the status line went out all we can do is cut the client's
            # connection, so that it sees a truncated response.
            resp.close()
            if isinstance(exc, UpstreamError):
                backend.breaker.record(False, time.monotonic())
            _log("response_cut", route=route.label, backend=backend.key, error=repr(str(exc) or type(exc).__name__))
            if request.transport is not None:
                request.transport.abort()
            self.metrics.observe(route.label, backend.key, status, time.monotonic() - started)
            return out
        finally:
            resp.close()  # unless the body was read to its end: no reuse of a half-read connection
        self.metrics.observe(route.label, backend.key, status, time.monotonic() - started)
        return out

    async def _websocket(self, request: web.BaseRequest, route: Route, started: float) -> web.StreamResponse:
        assert self._session is not None
        now = time.monotonic()
        pool = route.pool
        pinned, _ = self._pinned(request, pool, now)
        backend = pinned or route.chooser.choose(pool.available(now), self._hash_key(request, route))
        if backend is None:
            return web.Response(status=503, text="503 no backend available\n")
        skip = HOP_BY_HOP | {
            "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
            "sec-websocket-protocol", "host",
        }
        headers = [(k, v) for k, v in self._upstream_headers(request) if k.lower() not in skip]
        if "Host" in request.headers:
            headers.append(("Host", request.headers["Host"]))
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        task = backend.take()
        try:
            try:
                upstream = await self._session.ws_connect(
                    backend.base_url + request.raw_path,
                    headers=headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.config.timeouts.connect),
                    autoping=True,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                backend.breaker.record(False, time.monotonic())
                return web.Response(status=502, text=f"502 websocket upstream: {exc}\n")
            downstream = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else (), autoping=True
            )
            await downstream.prepare(request)
            self.metrics.observe(route.label, backend.key, 101, time.monotonic() - started)

            async def pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                           dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
                async for msg in src:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        await dst.send_str(msg.data)
                    elif msg.type == aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                    else:
                        break
                await dst.close(code=src.close_code or aiohttp.WSCloseCode.OK)

            tasks = [
                asyncio.create_task(pump(downstream, upstream)),
                asyncio.create_task(pump(upstream, downstream)),
            ]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await upstream.close()
                await downstream.close()
            return downstream
        finally:
            backend.give(task)

    # ------------------------------------------------------------ admin API (admin.Service)

    @property
    def admin_token(self) -> str | None:
        return self.config.admin.token

    def backend_rows(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {
                "pool": b.pool, "backend": b.key, "state": b.state(now), "weight": b.weight,
                "in_flight": b.in_flight, "max_conns": b.max_conns, "trips": b.breaker.trips,
            }
            for b in self.backends.values()
        ]

    def _collect(self) -> CollectorRegistry:
        """The registry, with the gauges read from live state first."""
        now = time.monotonic()
        total = 0
        for b in self.backends.values():
            self.metrics.backend_up.labels(b.pool, b.key).set(1 if b.available(now) else 0)
            total += b.in_flight
        self.metrics.in_flight.set(total)
        return self.metrics.registry

    def metric_families(self) -> list[Family]:
        return families(self._collect())

    async def load_json(self) -> dict[str, Any]:
        return self.load().as_json()

    async def workers_json(self) -> dict[str, Any]:
        report = self.load()
        return {"workers": [{"worker": 0, "pid": os.getpid(), "in_flight": report.in_flight,
                             "request_rate": report.request_rate}]}

    async def backends_json(self) -> dict[str, Any]:
        return {"generation": self.generation, "backends": self.backend_rows()}

    async def metrics_text(self) -> bytes:
        return generate_latest(self._collect())

    async def drain_json(self, pool: str, backend: str, on: bool) -> dict[str, Any]:
        b = self.drain(pool, backend, on)
        return {"pool": b.pool, "backend": b.key, "state": b.state(time.monotonic()), "in_flight": b.in_flight}

    async def reload_json(self) -> dict[str, Any]:
        ok = await self.reload()
        return {"reloaded": ok, "generation": self.generation}
