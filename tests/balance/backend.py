"""A small real HTTP backend for the balancer tests: `python backend.py NAME HOST PORT`.

Prints `ready` once listening. Every response carries `X-Backend: NAME`.
"""

from __future__ import annotations

import asyncio
import json
import sys

from aiohttp import web

state = {"healthy": True, "failing": False, "posts": 0, "requests": 0, "paths": []}
"""`paths`: the last 200 request targets this backend served (smuggling tests read it)."""


def app(name: str) -> web.Application:
    routes = web.RouteTableDef()

    def reply(text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, headers={"X-Backend": name})

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        return reply("ok" if state["healthy"] else "sick", 200 if state["healthy"] else 503)

    @routes.post("/control/health/{value}")
    async def set_health(request: web.Request) -> web.Response:
        state["healthy"] = request.match_info["value"] == "up"
        return reply("set")

    @routes.post("/control/fail/{value}")
    async def set_fail(request: web.Request) -> web.Response:
        state["failing"] = request.match_info["value"] == "on"
        return reply("set")

    @routes.get("/control/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state, headers={"X-Backend": name})

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return reply("slow done")

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        return reply("status", int(request.match_info["code"]))

    @routes.get("/headers")
    async def headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers), headers={"X-Backend": name})

    @routes.post("/post")
    async def post(request: web.Request) -> web.Response:
        state["posts"] += 1
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        delay = float(request.query.get("s", "0"))
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"size": size, "posts": state["posts"]}, headers={"X-Backend": name})

    @routes.get("/stream")
    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("chunks", "10"))
        out = web.StreamResponse(headers={"X-Backend": name})
        await out.prepare(request)
        for i in range(n):
            await out.write(f"chunk {i}\n".encode())
            await asyncio.sleep(float(request.query.get("gap", "0")))
        await out.write_eof()
        return out

    @routes.get("/big")
    async def big(request: web.Request) -> web.StreamResponse:
        """`size` bytes of body, streamed in 64 KiB writes (a slow reader's test)."""
        left = int(request.query.get("size", str(1 << 20)))
        out = web.StreamResponse(headers={"X-Backend": name})
        out.content_length = left
        await out.prepare(request)
        block = b"x" * 65536
        while left > 0:
            await out.write(block[:left])
            left -= len(block)
        await out.write_eof()
        return out

    @routes.get("/ws")
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("echo",))
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == web.WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
            elif msg.type == web.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    @routes.route("*", "/{tail:.*}")
    async def anything(request: web.Request) -> web.Response:
        await request.read()
        return reply(json.dumps({"backend": name, "path": request.path, "method": request.method}))

    application = web.Application()

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        state["requests"] += 1
        state["paths"] = [*state["paths"][-199:], request.path_qs]
        if state["failing"] and not request.path.startswith("/control/"):
            return reply("failing", 500)
        return await handler(request)

    application.middlewares.append(count)
    application.add_routes(routes)
    return application


async def main(name: str, host: str, port: int) -> None:
    runner = web.AppRunner(app(name), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
