"""Response rate limiting against the real server: a spoofed flood of one large answer from one
/24 (sources 127.0.9.1..50 on loopback) is held to the rate, plus the slipped (TC=1) responses,
while another network (127.0.10.1) is answered in full, and so is TCP from the flooding network."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import sys
import threading
import time
import urllib.request

import dns.edns
import dns.message
import pytest
from netutil import free_port, wait_until

from .conftest import REPO, ipv6_loopback, running

sys.path.insert(0, str(REPO / "bench"))
import rrl as flood  # noqa: E402  - bench/rrl.py: the same flood the bench runs

pytestmark = pytest.mark.slow

RATE, WINDOW, SECONDS = 20, 1, 3
FLOOD_QPS = 1500


def rrl_flags(*more: str) -> list[str]:
    return ["--rrl-rate", str(RATE), "--rrl-window", str(WINDOW), "--rrl-slip", "2", *more]


def metrics(admin: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=timeout) as response:
        return response.read().decode()


def counter(text: str, action: str, cls: str) -> float:
    m = re.search(rf'^geodns_rrl_responses_total{{action="{action}",class="{cls}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_flood_is_held_to_the_rate_and_others_are_answered(tmp_path, workers) -> None:
    admin = f"127.0.2.250:{free_port('127.0.2.250')}"
    extra = ["--workers", workers, "--admin", admin, *rrl_flags()]
    with running(tmp_path, extra=extra, workers=False) as server:
        result = flood.attack((server.host, server.port), SECONDS, FLOOD_QPS, good_qps=10, tcp_count=4)
        f = result.flood
        limited = f.sent - f.full
        print(f"workers={workers} flood sent={f.sent} full={f.full} truncated={f.truncated} "
              f"amplification={f.amplification:.2f} good={result.good.full}/{result.good.sent} "
              f"tcp={result.tcp.full}/{result.tcp.sent}")
        assert f.sent > FLOOD_QPS * SECONDS // 2
        # At most rate x (seconds + window) full answers (the flood's last packets are
        # answered up to half a second after it stops sending).
        assert RATE * SECONDS // 2 <= f.full <= RATE * (SECONDS + WINDOW + 0.5)
        assert f.truncated >= limited * 0.4  # slip 2: every other dropped response, TC=1
        assert f.amplification < 2.0
        # The other network asked for the same name: every query answered in full.
        assert result.good.sent >= 20 and result.good.full == result.good.sent
        # The flooding network over TCP: answered, never limited.
        assert result.tcp.sent == 4 and result.tcp.full == 4
        deadline = time.monotonic() + 5
        while True:  # workers push their counters once a second
            text = metrics(admin)
            slipped, dropped = counter(text, "slipped", "answer"), counter(text, "dropped", "answer")
            if slipped + dropped >= limited * 0.9 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert slipped >= f.truncated * 0.9 and dropped > 0
        assert slipped + dropped <= limited
        # The flood was answered from the answer cache's exact-query level (the batched
        # fast path, no parse) and limited all the same.
        hits = re.search(r"^geodns_cache_hits_total (\S+)$", text, re.M)
        assert hits and float(hits.group(1)) >= f.sent * 0.8


def test_ipv6_clients_are_limited_per_56(tmp_path) -> None:
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    port = free_port("::1")
    extra = ["--workers", "1", "--listen", f"[::1]:{port}", *rrl_flags()]
    with running(tmp_path, workers=False, extra=extra) as server:
        wire = flood.big_query()
        got = []
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            started = time.monotonic()
            for n in range(100):  # within a fraction of a second
                s.sendto(struct.pack("!H", n) + wire[2:], ("::1", port))
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while len(got) < 100:
                    got.append(s.recv(65535))
            elapsed = time.monotonic() - started
        assert server.alive()
    full = [r for r in got if not r[2] & 0x02 and r[7]]
    truncated = [r for r in got if r[2] & 0x02]
    assert RATE * WINDOW <= len(full) <= RATE * (WINDOW + elapsed)
    assert len(truncated) >= (100 - len(full)) // 2 - 1


def test_off_by_default_and_log_only_answers_everything(tmp_path) -> None:
    wire = flood.big_query()
    sources = [f"127.0.9.{i}" for i in range(1, 51)]
    with running(tmp_path, workers=False, extra=["--workers", "1"]) as server:
        off = flood.udp_flood((server.host, server.port), wire, sources, 1.0, 1000)
    admin = f"127.0.2.250:{free_port('127.0.2.250')}"
    with running(tmp_path, workers=False, extra=["--workers", "1", "--admin", admin, *rrl_flags("--rrl-log-only")]) as server:
        logged = flood.udp_flood((server.host, server.port), wire, sources, 1.0, 1000)
        # The worker pushes its counters once a second.
        wait_until(lambda: counter(metrics(admin), "logged", "answer") >= logged.sent - RATE * 2 - 5, 10,
                   f"log-only RRL counters after {logged.sent} queries", step=0.3)
        text = metrics(admin)
        log = server.log_text()
    print(f"RRL off: amplification {off.amplification:.1f}; log-only: {logged.amplification:.1f}")
    assert off.full == off.sent and off.amplification > 20
    assert logged.full == logged.sent
    assert counter(text, "logged", "answer") >= logged.sent - RATE * 2 - 5
    assert counter(text, "dropped", "answer") == 0
    assert "rrl limiting network=127.0.9.0/24 class=answer name=big.gslb.example.test." in log
    assert "log-only" in log


def test_exempt_network_is_never_limited(tmp_path) -> None:
    extra = ["--workers", "1", *rrl_flags("--rrl-exempt", "127.0.9.0/26", "--rrl-exempt", "::1/128")]
    with running(tmp_path, workers=False, extra=extra) as server:
        target = (server.host, server.port)
        exempt = flood.udp_flood(target, flood.big_query(), [f"127.0.9.{i}" for i in range(1, 51)], 1.0, 500)
        limited = flood.udp_flood(target, flood.big_query(), [f"127.0.9.{i}" for i in range(100, 150)], 1.0, 500)
    assert exempt.full == exempt.sent
    assert limited.full <= RATE * (1 + WINDOW + 0.5)


def test_bad_rrl_settings_refuse_to_start(tmp_path) -> None:
    import subprocess

    for bad in (["--rrl-rate", "-3"], ["--rrl-exempt", "10.0.0.0/40"], ["--rrl-slots", "100"], ["--rrl-window", "0"]):
        out = subprocess.run(
            [sys.executable, "-m", "geodns", "serve", "--listen", "127.0.2.251:1", *bad],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 2 and "rrl" in out.stderr, (bad, out.stderr)
    node = tmp_path / "node.yaml"
    node.write_text("node: a\nrrl:\n  rate: 10\n  slipp: 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "geodns", "serve", "--listen", "127.0.2.251:1", "--node", str(node), "--state", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "slipp: unknown setting" in out.stderr, out.stderr


def test_node_file_rrl_section_with_flags_over_it(tmp_path) -> None:
    node = tmp_path / "node.yaml"
    node.write_text(f"node: a\nrrl:\n  rate: 1000\n  window: {WINDOW}\n  slip: 0\n")
    extra = ["--workers", "1", "--node", str(node), "--state", "none", "--rrl-rate", str(RATE)]
    with running(tmp_path, workers=False, extra=extra) as server:
        f = flood.udp_flood((server.host, server.port), flood.big_query(), [f"127.0.9.{i}" for i in range(1, 51)], 1.0, 800)
        log = server.log_text()
    assert f"rrl=rate={RATE}/s slip=0" in log
    assert f.full <= RATE * (1 + WINDOW + 0.5) and f.truncated == 0  # the flag's rate, the file's slip


def cookie_query(qid: int, cookie: bytes) -> bytes:
    """The flood's query with a COOKIE option (RFC 7873): a client cookie, or client + server."""
    base = flood.big_query(qid)
    option = struct.pack("!HH", 10, len(cookie)) + cookie
    return base[:-2] + struct.pack("!H", len(option)) + option


def test_a_valid_server_cookie_is_answered_during_a_flood(tmp_path) -> None:
    """The flooding network's own resolver, once it holds our cookie, is not limited; the same
    queries without it (or with a forged server cookie) are."""
    host = "127.0.9.7"
    with running(tmp_path, workers=False, extra=["--workers", "2", *rrl_flags()]) as server:
        target = (server.host, server.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            s.settimeout(3)
            s.sendto(cookie_query(1, b"clientck"), target)
            first = dns.message.from_wire(s.recv(65535))
        (option,) = [o for o in first.options if o.otype == dns.edns.OptionType.COOKIE]
        assert option.client == b"clientck" and len(option.server) == 16
        cookie = option.client + option.server
        forged = option.client + option.server[:8] + bytes(8)

        results: dict[str, list[int]] = {"cookie": [], "plain": [], "forged": []}

        flood_seconds = 5.0
        stop_asking = time.monotonic() + flood_seconds - 0.5

        def ask_during_flood() -> None:
            time.sleep(1.0)  # the flood has used the bucket by now
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, 0))
                s.settimeout(0.3)
                for n in range(10):
                    if time.monotonic() > stop_asking:
                        break
                    for kind, wire in (("cookie", cookie_query(100 + n, cookie)), ("plain", flood.big_query(200 + n)),
                                       ("forged", cookie_query(300 + n, forged))):
                        s.sendto(wire, target)
                        try:
                            while (data := s.recv(65535))[:2] != wire[:2]:
                                pass
                            results[kind].append(len(data) if not data[2] & 0x02 and data[7] else 0)
                        except TimeoutError:
                            results[kind].append(-1)
                    time.sleep(0.05)

        asker = threading.Thread(target=ask_during_flood)
        asker.start()
        f = flood.udp_flood(target, flood.big_query(), [f"127.0.9.{i}" for i in range(1, 51)], flood_seconds, FLOOD_QPS)
        asker.join()
    assert f.full <= RATE * (flood_seconds + WINDOW + 0.5)
    assert len(results["cookie"]) >= 5, results
    assert all(n > 1000 for n in results["cookie"]), results  # every one answered in full
    assert sum(n > 0 for n in results["plain"]) <= 3, results  # the flood's share: limited
    assert sum(n > 0 for n in results["forged"]) <= 3, results
