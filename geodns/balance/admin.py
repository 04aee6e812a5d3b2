"""The balancer's admin API: one aiohttp app, one route table.

The same routes serve a single balancer process and the parent of `--workers N`;
what differs is the `Service` behind them (`server.Balancer` answers from its
own state, `workers.Supervisor` asks every worker and merges). Read endpoints
are open; write endpoints need the bearer token of `admin.token`.
"""

from __future__ import annotations

import hmac
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST


class Service(Protocol):
    """What the admin API asks of a balancer, one process or many."""

    @property
    def admin_token(self) -> str | None: ...

    async def load_json(self) -> dict[str, Any]: ...

    async def workers_json(self) -> dict[str, Any]: ...

    async def backends_json(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> bytes: ...

    async def drain_json(self, pool: str, backend: str, on: bool) -> dict[str, Any]:
        """The drained backend's row; KeyError naming it when there is no such backend."""
        ...

    async def reload_json(self) -> dict[str, Any]: ...


def authorised(token: str | None, request: web.Request) -> web.Response | None:
    """None when the request carries the admin bearer token, else the refusal to send."""
    if token is None:
        return web.json_response({"error": "write endpoints disabled: no admin.token"}, status=403)
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
        return web.json_response(
            {"error": "bearer token required"}, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
    return None


def admin_app(service: Service) -> web.Application:
    async def load(request: web.Request) -> web.Response:
        report = await service.load_json()
        return web.json_response(report, status=200 if report["healthy_backends"] else 503)

    async def workers(request: web.Request) -> web.Response:
        return web.json_response(await service.workers_json())

    async def backends(request: web.Request) -> web.Response:
        return web.json_response(await service.backends_json())

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=await service.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def drain(request: web.Request) -> web.Response:
        denied = authorised(service.admin_token, request)
        if denied is not None:
            return denied
        on = request.path.endswith("/drain")
        try:
            row = await service.drain_json(request.match_info["pool"], request.match_info["backend"], on)
        except KeyError as exc:
            return web.json_response({"error": exc.args[0]}, status=404)
        return web.json_response(row)

    async def reload(request: web.Request) -> web.Response:
        denied = authorised(service.admin_token, request)
        if denied is not None:
            return denied
        result = await service.reload_json()
        return web.json_response(result, status=200 if result["reloaded"] else 422)

    app = web.Application()
    app.router.add_get("/v1/load", load)
    app.router.add_get("/v1/workers", workers)
    app.router.add_get("/v1/backends", backends)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/backends/{pool}/{backend}/drain", drain)
    app.router.add_post("/v1/backends/{pool}/{backend}/undrain", drain)
    app.router.add_post("/v1/reload", reload)
    return app
