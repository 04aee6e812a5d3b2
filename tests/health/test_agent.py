"""`python -m geodns.health.agent` as a real process: it probes, serves its
views on /v1/health, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from .conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "agent-health-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

ZONE = """\
zone: gslb.test
soa: {{mname: ns1, rname: hostmaster, serial: 1}}
nameservers:
  - name: ns1
    glue: [127.0.0.53]
regions:
  eu:
    coordinates: [53.3, -6.3]
    endpoints: [127.0.0.82]
    check: {{type: tcp, port: {port}, interval: 0.2, timeout: 0.1, jitter: 0, fall: 2, rise: 2}}
records:
  www:
    steer: [healthy, geo_proximity]
"""


async def test_agent_process_probes_and_reports(tmp_path):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.82", 0)
    port = server.sockets[0].getsockname()[1]
    (tmp_path / "zones").mkdir()
    (tmp_path / "zones" / "z.yaml").write_text(ZONE.format(port=port))
    listen = free_port("127.0.0.81")
    (tmp_path / "agent.yaml").write_text(
        f"node: agent1\nobserver_only: true\nlisten: '127.0.0.81:{listen}'\nstate_dir: state\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "geodns.health.agent", "--node", str(tmp_path / "agent.yaml"),
        "--zones", str(tmp_path / "zones"), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "GEODNS_ADMIN_TOKEN": TOKEN},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    health = f"http://127.0.0.81:{listen}/v1/health"
    try:
        status: dict = {}

        async def verdict_known() -> bool:
            nonlocal status
            try:
                async with aiohttp.ClientSession() as http, http.get(health, headers=AUTH) as r:
                    status = await r.json()
            except aiohttp.ClientError:
                return False
            v = status["verdicts"].get("eu/127.0.0.82")
            return bool(v) and v["cause"].startswith("0/1")

        loop = asyncio.get_running_loop()
        start = loop.time()
        while not await verdict_known():
            assert loop.time() - start < 10, "agent never reported a decided verdict"
            await asyncio.sleep(0.1)
        assert status["node"] == "agent1" and status["observer_only"] is True
        async with aiohttp.ClientSession() as http, http.get(health) as r:
            assert r.status == 401  # endpoints and check paths are not for anyone who can connect
        server.close()
        start = loop.time()
        while True:
            async with aiohttp.ClientSession() as http, http.get(health, headers=AUTH) as r:
                status = await r.json()
            if not status["verdicts"]["eu"]["up"]:
                break
            assert loop.time() - start < 5
            await asyncio.sleep(0.1)
    finally:
        server.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, out.decode()
    assert b"health verdict node=agent1 target=eu up=false" in out
    assert (tmp_path / "state" / "state.json").exists()


async def test_agent_rejects_a_bad_node_file(tmp_path):
    (tmp_path / "agent.yaml").write_text("node: a\nfavourite_colour: blue\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "geodns.health.agent", "--node", str(tmp_path / "agent.yaml"),
        "--zones", str(tmp_path), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    assert b"agent.yaml:2: favourite_colour: unknown setting" in err
