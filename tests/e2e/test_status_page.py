"""The status page in headless Chromium, driven over the DevTools protocol.

No browser driver package: Chromium's own remote-debugging WebSocket, spoken
with aiohttp. The page must load without console errors, and show a region
going down within seconds of its drain. A screenshot goes to
docs/status-page.png for the README.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dnsclient import ask, fqdn
from netutil import async_wait_until

from tests.e2e import conftest as e2e

pytestmark = pytest.mark.slow

HOST = f"{e2e.NET}.40"
SCREENSHOT = e2e.ROOT / "docs" / "status-page.png"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


class DevTools:
    """The few DevTools calls this test needs, over one page's WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                self.errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[i] = future
        await self.ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, 15)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float) -> float:
        """Seconds until `expression` is truthy in the page."""
        started = time.monotonic()
        while not await self.js(expression):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not true within {timeout}s: {expression}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started


async def devtools_port(profile: Path, proc: e2e.Proc, timeout: float = 20) -> int:
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not active.exists() or not active.read_text().strip():
        assert proc.popen.poll() is None, f"chromium exited:\n{proc.output()}"
        assert time.monotonic() < deadline, f"chromium did not open its DevTools port:\n{proc.output()}"
        await asyncio.sleep(0.1)
    return int(active.read_text().split()[0])


def traffic(host: str, port: int) -> None:
    """Answers to clients on several continents, so the page has shares to show."""
    for client, n in (("81.2.69.160", 12), ("8.8.8.8", 6), ("1.128.0.1", 4), ("200.160.0.1", 2), ("4.2.2.2", 3)):
        for _ in range(n):
            ask((host, port), fqdn("www"), "A", ecs=f"{client}/24", timeout=2)


async def test_status_page_shows_a_drain_within_seconds(tmp_path: Path, procs: list[e2e.Proc]) -> None:
    chromium = e2e.need("chromium", "chromium")
    zones = e2e.copy_zones(tmp_path)
    port = e2e.free_port(HOST)
    node = e2e.start_geodns(tmp_path, HOST, port, zones)
    procs.append(node.proc)
    traffic(HOST, port)
    # The page's shares need two samples of the counters (taken every second or so).
    await async_wait_until(lambda: e2e.http_json(f"http://{node.admin}/v1/status")[1]["shares"]["window_seconds"] > 0,
                           10, "two samples of the answer counters")
    traffic(HOST, port)

    profile = tmp_path / "chromium-profile"
    env = {**os.environ, "HOME": str(tmp_path)}
    browser = e2e.spawn("chromium", [chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1500", "about:blank"], tmp_path, env)
    procs.append(browser)
    debug_port = await devtools_port(profile, browser)

    async with aiohttp.ClientSession(trust_env=False) as session:
        async with session.get(f"http://127.0.0.1:{debug_port}/json/list") as r:
            pages = [t for t in await r.json() if t.get("type") == "page"]
        assert pages, "no page target"
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024) as ws:
            page = DevTools(ws)
            for domain in ("Runtime", "Log", "Page"):
                await page.call(f"{domain}.enable")
            await page.call("Emulation.setDeviceMetricsOverride", width=1280, height=1500, deviceScaleFactor=1, mobile=False)
            await page.call("Page.navigate", url=f"http://{node.admin}/")
            await page.until("document.querySelectorAll('#markers circle').length === 5", timeout=10)
            assert await page.js("document.querySelector('#regions tr[data-region=\"eu-west\"]').dataset.state") == "up"
            # A verdict's state shows where it says more than up or down (no health service here).
            assert await page.js("document.querySelector('#regions tr[data-region=\"eu-west\"] .state').textContent") == "up"
            assert await page.js("[stateLabel('up', 'unknown'), stateLabel('down', 'forced'), stateLabel('up', 'up')].join()") \
                == "up (unknown),down (forced),up"
            # No NATS here: no drain history box. Given a NATS node's history, the page lists it.
            assert await page.js("document.querySelector('#drain-history-box').hidden") is True
            shown = await page.js(
                "fetch('/v1/status').then(r => r.json()).then(d => {"
                " d.drain_history = {'eu-west': [{revision: 1, active: true, by: 'n1', at: d.now - 90, reason: 'kernel'},"
                " {revision: 2, active: false, by: 'n2', at: d.now - 30, reason: ''}]};"
                " drawLists(d); const box = document.querySelector('#drain-history-box');"
                " return [box.hidden, ...[...box.querySelectorAll('li')].map(li => li.textContent)]; })")
            assert shown == [False, "30s ago eu-west undrained by n2", "90s ago eu-west drained by n1: kernel"]
            assert await page.js("document.querySelector('footer a[href=\"https://db-ip.com\"]').textContent") == "IP Geolocation by DB-IP"
            from geodns.control.zonestore import content_hash

            digest = content_hash((zones / "example.yaml").read_text())
            zone_row = await page.js("document.querySelector('#zones li[data-zone=\"gslb.example.test\"]').textContent")
            assert digest[:19] in zone_row  # each zone's content hash, as on every other node
            await page.until("document.querySelector('#window').textContent.endsWith('s')", timeout=6)

            status, doc = e2e.http_json(f"http://{node.admin}/v1/drain", {"target": "eu-west", "reason": "maintenance: kernel upgrade"}, token=e2e.TOKEN)
            assert status == 200, doc
            seconds = await page.until(
                "document.querySelector('#markers circle[data-region=\"eu-west\"]').dataset.state === 'drained'"
                " && document.querySelector('#regions tr[data-region=\"eu-west\"]').dataset.state === 'drained'",
                timeout=5,
            )
            assert seconds < 5
            assert "kernel upgrade" in await page.js("document.querySelector('#drains').textContent")
            assert "eu-west" in await page.js("document.querySelector('#changes').textContent")

            # The explain form gives the same reasoning as `geodns query`.
            await page.js(
                "document.querySelector('#explain-client').value = '81.2.69.160';"
                "document.querySelector('#explain button').click(); true"
            )
            await page.until("document.querySelector('#explanation').textContent.includes('192.0.2.10')", timeout=5)

            traffic(HOST, port)  # London's answers now go to us-east
            await asyncio.sleep(2.5)
            assert page.errors == [], page.errors
            shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            png = base64.b64decode(shot["data"])
            assert png.startswith(b"\x89PNG"), "the page rendered to a PNG"
            if os.environ.get("GEODNS_SCREENSHOT"):  # refresh the README's picture only when asked
                SCREENSHOT.parent.mkdir(exist_ok=True)
                SCREENSHOT.write_bytes(png)
            page.reader.cancel()
