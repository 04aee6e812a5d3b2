"""`/v1/zones`: list, read, write and delete zones on the admin app.

Reads follow the admin app's rule (open on loopback, the token from
elsewhere); PUT and DELETE always need the token. The work is
`geodns.control.zonestore.ZoneStore`'s; this module only speaks HTTP.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from geodns.control.admin import error, read, write
from geodns.control.zonestore import (
    MAX_ZONE_BYTES,
    ZoneRefused,
    ZoneStore,
    as_json,
    error_dicts,
    text_from_json,
    zone_name,
)

ZONES = web.AppKey("zone_store", ZoneStore)
YAML_TYPE = "application/yaml"
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain", "")


def _name(request: web.Request) -> str | web.Response:
    try:
        return zone_name(request.match_info["zone"])
    except ValueError as exc:
        return error(400, str(exc))


def _refused(exc: ZoneRefused) -> web.Response:
    return error(exc.status, exc.message, errors=error_dicts(exc.errors))


def _wants_json(request: web.Request) -> bool:
    if request.query.get("format") in ("json", "yaml"):
        return request.query["format"] == "json"
    accept = request.headers.get("Accept", "")
    return "json" in accept and "yaml" not in accept


@read
async def list_zones(request: web.Request) -> web.Response:
    store = request.app[ZONES]
    doc: dict[str, Any] = {"generation": store.controller.generation, "zones": store.describe()}
    for extra in request.app.get(ZONE_STATUS, ()):
        doc.update(extra())
    return web.json_response(doc)


@read
async def get_zone(request: web.Request) -> web.Response:
    name = _name(request)
    if isinstance(name, web.Response):
        return name
    store = request.app[ZONES]
    text = store.text(name)
    if text is None:
        return error(404, f"no zone {name}")
    headers = {"ETag": f'"{store.hashes().get(name, "")}"'}
    if _wants_json(request):
        return web.json_response(as_json(text), headers=headers)
    return web.Response(text=text, content_type=YAML_TYPE, headers=headers)


async def _body_text(request: web.Request) -> str | web.Response:
    if request.content_length is not None and request.content_length > MAX_ZONE_BYTES:
        return error(413, f"zone body larger than {MAX_ZONE_BYTES} bytes")
    raw = await request.content.read(MAX_ZONE_BYTES + 1)
    if len(raw) > MAX_ZONE_BYTES:
        return error(413, f"zone body larger than {MAX_ZONE_BYTES} bytes")
    kind = request.content_type.lower() if request.headers.get("Content-Type") else ""
    if "json" in kind:
        try:
            return text_from_json(raw)
        except ValueError as exc:
            return error(400, str(exc))
    if kind not in _YAML_TYPES:
        return error(415, f"Content-Type {kind!r}: send the zone as {YAML_TYPE} or application/json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return error(400, "body is not UTF-8")
    if "\0" in text or not text.strip():
        return error(400, "body must be a zone document (YAML or JSON)")
    return text


@write
async def put_zone(request: web.Request) -> web.Response:
    name = _name(request)
    if isinstance(name, web.Response):
        return name
    text = await _body_text(request)
    if isinstance(text, web.Response):
        return text
    try:
        result = request.app[ZONES].put(name, text, "api")
    except ZoneRefused as exc:
        return _refused(exc)
    return web.json_response(result, status=201 if result["created"] else 200)


@write
async def delete_zone(request: web.Request) -> web.Response:
    name = _name(request)
    if isinstance(name, web.Response):
        return name
    try:
        return web.json_response(request.app[ZONES].delete(name, "api"))
    except ZoneRefused as exc:
        return _refused(exc)


ZONE_STATUS = web.AppKey("zone_status_extras", list)
"""Callables adding keys to `GET /v1/zones` (the peer sync adds what peers serve)."""


def add_routes(app: web.Application, store: ZoneStore) -> None:
    app[ZONES] = store
    app[ZONE_STATUS] = []
    app.router.add_get("/v1/zones", list_zones)
    app.router.add_get("/v1/zones/{zone}", get_zone)
    app.router.add_put("/v1/zones/{zone}", put_zone)
    app.router.add_delete("/v1/zones/{zone}", delete_zone)
