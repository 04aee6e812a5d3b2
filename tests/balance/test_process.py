"""`python -m geodns.balance` as a real process: reload on SIGHUP, drain, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from geodns.balance import parse

from .conftest import NET, free_port


def write(path: Path, backends: list[str], listen: str, admin: str, **extra) -> None:
    data = {
        "listen": listen,
        "admin": {"listen": admin, "token": "t"},
        "drain_timeout": 5,
        "pools": {"web": {"backends": backends}},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))


def start_balancer(tmp_path: Path, backends: list[str], host: str, workers: int) -> tuple[subprocess.Popen, Path, str, str]:
    """A `python -m geodns.balance` process on `host` in front of `backends`: (process, config, listen, admin)."""
    listen, admin = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    cfg = tmp_path / "region.yaml"
    write(cfg, backends, listen, admin)
    proc = subprocess.Popen([sys.executable, "-m", "geodns.balance", "--config", str(cfg), "--workers", str(workers)],
                            stderr=subprocess.PIPE, text=True)
    return proc, cfg, listen, admin


async def wait_up(session: aiohttp.ClientSession, admin: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert proc.poll() is None, "balancer exited"
        try:
            async with session.get(f"http://{admin}/v1/load") as r:
                if r.status in (200, 503):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("balancer did not start")


def test_check_flag_names_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.4.3:1\npools: {web: {backends: ['127.0.4.10:1'], wieght: 2}}\n")
    r = subprocess.run([sys.executable, "-m", "geodns.balance", "--config", str(bad), "--check"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "bad.yaml:2: pools.web.wieght: unknown key" in r.stderr


@pytest.mark.slow
async def test_sighup_reload_drains_and_sigterm_finishes_in_flight(backends, tmp_path: Path) -> None:
    backs = await backends(2, first=30)
    proc, cfg, listen, admin = start_balancer(tmp_path, [b.address for b in backs], f"{NET}.3", workers=1)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            await wait_up(s, admin, proc)
            # Round robin: the first slow request goes to b0, which we then remove.
            slow = asyncio.create_task(s.get(f"http://{listen}/slow?s=1.5"))
            await asyncio.sleep(0.3)
            write(cfg, [backs[1].address], listen, admin)
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            counts: Counter[str] = Counter()
            for _ in range(10):
                async with s.get(f"http://{listen}/") as r:
                    counts[r.headers["X-Backend"]] += 1
            assert counts == {"b1": 10}
            r = await slow
            assert (r.status, r.headers["X-Backend"]) == (200, "b0")  # finished while draining

            # An invalid file on SIGHUP keeps the running configuration.
            cfg.write_text("listen: [\n")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            async with s.get(f"http://{listen}/") as r:
                assert r.status == 200
            async with s.get(f"http://{admin}/metrics") as r:
                assert 'geodns_balance_reloads_total{result="error"} 1.0' in await r.text()

            # SIGTERM: stop accepting, finish what is in flight, exit 0.
            slow = asyncio.create_task(s.get(f"http://{listen}/slow?s=1"))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            r = await slow
            assert r.status == 200
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "event=reloaded generation=2" in log and "event=retired" in log
        assert "event=reload_failed" in log and "event=stopped" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_removed_backend_cut_after_drain_timeout(backends, balancer) -> None:
    backs = await backends(2, first=40)
    b = await balancer({"drain_timeout": 0.5, "pools": {"web": {"backends": [x.address for x in backs]}}})
    a = b.addresses[0]
    # A raw connection: aiohttp's client would quietly resend a cut GET.
    reader, writer = await asyncio.open_connection(a.host, a.port)
    writer.write(b"GET /slow?s=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    data = {"listen": str(a), "drain_timeout": 0.5, "pools": {"web": {"backends": [backs[1].address]}}}
    b.apply(parse(data))
    started = time.monotonic()
    received = await asyncio.wait_for(reader.read(), 5)
    assert received == b""  # closed without a response, at the drain timeout
    assert time.monotonic() - started < 2.0
    writer.close()
    assert b.generation == 2


async def test_admin_reload_endpoint(backends, balancer, client, tmp_path: Path) -> None:
    backs = await backends(2, first=45)
    host = f"{NET}.2"
    listen, admin = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    cfg = tmp_path / "r.yaml"
    write(cfg, [backs[0].address], listen, admin)
    b = await balancer(yaml.safe_load(cfg.read_text()), str(cfg))
    reload_url = f"http://{admin}/v1/reload"
    auth = {"Authorization": "Bearer t"}
    async with client.post(reload_url) as r:
        assert r.status == 401
    write(cfg, [backs[1].address], listen, admin)
    async with client.post(reload_url, headers=auth) as r:
        assert (r.status, await r.json()) == (200, {"reloaded": True, "generation": 2})
    async with client.get(f"http://{listen}/") as r:
        assert r.headers["X-Backend"] == "b1"
    cfg.write_text("listen: 1\n")
    async with client.post(reload_url, headers=auth) as r:
        assert (r.status, (await r.json())["generation"]) == (422, 2)
    assert b.generation == 2


async def test_runs_on_asyncio_loop_when_uvloop_cannot_be_imported(backends, tmp_path: Path) -> None:
    backs = await backends(1, first=47)
    host = f"{NET}.3"
    listen, admin = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
    cfg = tmp_path / "r.yaml"
    write(cfg, [backs[0].address], listen, admin)
    # uvloop made unimportable (as where it is not installed), then the usual entry point.
    code = ("import runpy, sys; sys.modules['uvloop'] = None; "
            f"sys.argv = ['geodns balance', '--config', {str(cfg)!r}, '--workers', '1']; "
            "runpy.run_module('geodns.balance', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            await wait_up(s, admin, proc)
            async with s.get(f"http://{listen}/x") as r:
                assert (r.status, r.headers["X-Backend"]) == (200, "b0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "event=no_uvloop" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
