"""`--workers N`: merging the workers' answers (pure), and real worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from geodns.balance.metrics import Collected, Metrics, families
from geodns.balance.workers import merge_backends, merge_load, merge_metrics

from .conftest import NET
from .test_process import start_balancer, wait_up


def load(**over):
    base = {
        "region": "r", "healthy_backends": 3, "total_backends": 3, "draining_backends": 0,
        "capacity": 100, "in_flight": 10, "utilisation": 0.1, "request_rate": 50.0,
        "saturated": False, "saturation": 0.8, "generation": 2,
    }
    return {**base, **over}


def test_merge_load_sums_in_flight_and_rate() -> None:
    merged = merge_load([load(in_flight=30, request_rate=10.5), load(in_flight=55, request_rate=20.25, generation=3)])
    assert merged["in_flight"] == 85 and merged["request_rate"] == 30.75
    assert merged["utilisation"] == 0.85 and merged["saturated"] is True  # 85 / 100 > 0.8
    assert (merged["generation"], merged["workers"], merged["capacity"]) == (2, 2, 100)


def test_merge_load_takes_the_widest_health_view() -> None:
    # One worker has not yet seen a backend come back: the region still has 3.
    merged = merge_load([load(healthy_backends=2, capacity=0), load(healthy_backends=3, capacity=300)])
    assert (merged["healthy_backends"], merged["capacity"]) == (3, 300)
    none = merge_load([load(healthy_backends=0, capacity=0, in_flight=0)] * 2)
    assert (none["utilisation"], none["saturated"]) == (1.0, True)


def test_merge_backends_sums_per_backend() -> None:
    row = {"pool": "web", "backend": "a:1", "state": "draining", "weight": 1, "in_flight": 0,
           "max_conns": 9, "trips": 1}
    merged = merge_backends([
        {"generation": 2, "backends": [dict(row)]},
        {"generation": 2, "backends": [dict(row, in_flight=2, trips=2)]},
    ])
    assert merged["backends"] == [dict(row, in_flight=2, trips=3)]
    drained = merge_backends([{"generation": 1, "backends": [dict(row, state="drained")]}] * 2)
    assert drained["backends"][0]["state"] == "drained"


def test_merge_metrics_sums_counters_and_maxes_gauges_of_the_same_thing() -> None:
    workers = []
    for served in (3, 4):
        m = Metrics()
        for _ in range(served):
            m.observe("*/", "a", 200, 0.01)
        m.backend_up.labels("web", "a").set(1)
        m.in_flight.set(2)
        workers.append(json.loads(json.dumps(families(m.registry))))  # as sent by a worker
    text = generate_latest(Collected(merge_metrics(workers))).decode()
    assert 'geodns_balance_requests_total{backend="a",route="*/",status="200"} 7.0' in text
    assert 'geodns_balance_request_duration_seconds_count{route="*/"} 7.0' in text
    assert 'geodns_balance_backend_up{backend="a",pool="web"} 1.0' in text
    assert "geodns_balance_in_flight 4.0" in text
    assert "# TYPE geodns_balance_requests_total counter" in text


def test_merged_metrics_text_is_escaped_by_prometheus_client() -> None:
    family = {"name": "x", "type": "gauge", "help": "a \\ b\nc", "unit": "",
              "samples": [["x", {"route": 'q"\\\n'}, 1.0]]}
    text = generate_latest(Collected(merge_metrics([[family], [family]]))).decode()
    assert "# HELP x a \\\\ b\\nc\n" in text
    assert 'x{route="q\\"\\\\\\n"} 2.0' in text
    assert [f.name for f in text_string_to_metric_families(text)] == ["x"]


@pytest.mark.slow
async def test_workers_spread_sum_drain_respawn_and_shut_down_gracefully(backends, tmp_path: Path) -> None:
    backs = await backends(2, first=50)
    proc, _, listen, admin = start_balancer(tmp_path, [b.address for b in backs], f"{NET}.4", workers=2)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            await wait_up(s, admin, proc)
            # 40 slow requests on 40 connections: SO_REUSEPORT hashes them over both workers.
            slow = [asyncio.create_task(s.get(f"http://{listen}/slow?s=1.5")) for _ in range(40)]
            await asyncio.sleep(0.7)
            async with s.get(f"http://{admin}/v1/workers") as r:
                workers = (await r.json())["workers"]
            async with s.get(f"http://{admin}/v1/load") as r:
                report = await r.json()
            assert [w["worker"] for w in workers] == [0, 1]
            assert all(w["in_flight"] > 0 for w in workers), workers  # both processes serve
            assert sum(w["in_flight"] for w in workers) == 40
            assert (report["in_flight"], report["workers"], report["healthy_backends"]) == (40, 2, 2)
            assert report["request_rate"] == pytest.approx(4.0, abs=0.11)  # 40 requests / 10 s window, summed
            assert all(r.status == 200 for r in await asyncio.gather(*slow))

            # A drain reaches every worker.
            async with s.post(f"http://{admin}/v1/backends/web/{backs[0].address}/drain",
                              headers={"Authorization": "Bearer t"}) as r:
                assert (r.status, (await r.json())["state"]) == (200, "drained")
            counts: Counter[str] = Counter()
            for _ in range(20):
                async with aiohttp.ClientSession() as fresh, fresh.get(f"http://{listen}/") as r:
                    counts[r.headers["X-Backend"]] += 1
            assert counts == {"b1": 20}
            async with s.get(f"http://{admin}/metrics") as r:
                text = await r.text()
            served = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("geodns_balance_requests_total{")]
            assert sum(served) == 60  # 40 + 20, counted in two processes, reported once

            # A worker that dies is started again.
            os.kill(workers[0]["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                async with s.get(f"http://{admin}/v1/workers") as r:
                    pids = [w["pid"] for w in (await r.json())["workers"]]
                if workers[0]["pid"] not in pids and len(pids) == 2:
                    break
            else:
                raise AssertionError("worker 0 was not respawned")

            # SIGTERM to the parent: every worker finishes what it has in flight, exit 0.
            slow = [asyncio.create_task(s.get(f"http://{listen}/slow?s=1")) for _ in range(10)]
            await asyncio.sleep(0.4)
            proc.send_signal(signal.SIGTERM)
            assert all(r.status == 200 for r in await asyncio.gather(*slow))
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "event=worker_exited worker=0" in log and "event=stopped" in log
        assert log.count("event=stopped") == 3  # two workers and the parent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
