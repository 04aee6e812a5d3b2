#!/usr/bin/env python3
"""Response rate limiting under a spoofed flood: what gets through, and the amplification.

A flood of one large answer (the example zone's `big` TXT, EDNS 4096) from one
/24 of spoofed sources (127.0.9.1..50: loopback lets us send from any
127.x address, which is what a spoofer's victim network looks like), while a
second network (127.0.10.1) asks the same name at a polite rate and the
flooding network also asks over TCP. Each case runs on a fresh `geodns serve`:

    RRL off | RRL on (1 worker) | RRL on, 2 workers, shared table | 2 workers, rate divided

and prints, per case: full answers the flood got (and the most RRL allows,
rate x (seconds + window)), truncated (slipped) ones, bytes out / bytes in
(the amplification factor), the other network's and TCP's answered share.
The other network asks at 3/4 of the rate from one socket, so the kernel
sends all its queries to one worker: with the rate divided among workers,
that worker's share of the rate is less than it asks.

    python3 bench/rrl.py                        # ~1 min, prints a Markdown table
    python3 bench/rrl.py --rate 20 --flood-qps 3000 --duration 4

Only loopback: the server and every source are 127.x addresses on this host.
The flood is bounded by --duration and --flood-qps; nothing runs afterwards.
tests/integration/test_rrl.py uses the same functions with smaller numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOOD_NET = "127.0.9"
GOOD_NET = "127.0.10"
TC = 0x0200


def big_query(qid: int = 0x4242, name: str = "big.gslb.example.test", qtype: int = 16, payload: int = 4096) -> bytes:
    """A query with EDNS (payload 4096) and no RD, as an amplification flood sends it."""
    qname = b"".join(bytes((len(label),)) + label.encode() for label in name.split(".")) + b"\x00"
    opt = b"\x00" + struct.pack("!HHIH", 41, payload, 0, 0)
    return struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1) + qname + struct.pack("!HH", qtype, 1) + opt


@dataclass
class Tally:
    """What one client (or a flood of them) sent and got back."""

    sent: int = 0
    sent_bytes: int = 0
    full: int = 0
    """Responses with records and TC=0."""
    truncated: int = 0
    """TC=1 responses (a slipped response, or an answer too big for the payload)."""
    other: int = 0
    received_bytes: int = 0
    seconds: float = 0.0

    def count(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if len(data) < 12:
            self.other += 1
            return
        flags, ancount = struct.unpack_from("!H", data, 2)[0], struct.unpack_from("!H", data, 6)[0]
        if flags & TC:
            self.truncated += 1
        elif ancount:
            self.full += 1
        else:
            self.other += 1

    @property
    def answered(self) -> int:
        return self.full + self.truncated + self.other

    @property
    def amplification(self) -> float:
        return self.received_bytes / self.sent_bytes if self.sent_bytes else 0.0


def udp_flood(target: tuple[str, int], wire: bytes, sources: list[str], duration: float, qps: float) -> Tally:
    """Send `wire` from every address in `sources` in turn at `qps` for `duration` s; count what returns."""
    tally = Tally()
    sel = selectors.DefaultSelector()
    socks = []
    try:
        for source in sources:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((source, 0))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        start = time.monotonic()
        end = start + duration
        i = 0
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = int((now - start) * qps) - tally.sent
            for _ in range(min(due, 256)):
                s = socks[i % len(socks)]
                i += 1
                qid = i & 0xFFFF
                with contextlib.suppress(BlockingIOError):
                    s.sendto(struct.pack("!H", qid) + wire[2:], target)
                    tally.sent += 1
                    tally.sent_bytes += len(wire)
            _drain(sel, tally, 0.001)
        tally.seconds = time.monotonic() - start
        drain_end = time.monotonic() + 0.5
        while time.monotonic() < drain_end:
            _drain(sel, tally, 0.05)
    finally:
        for s in socks:
            s.close()
        sel.close()
    return tally


def _drain(sel: selectors.BaseSelector, tally: Tally, timeout: float) -> None:
    for key, _ in sel.select(timeout):
        sock = key.fileobj
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, ConnectionRefusedError):
                break
            tally.count(data)


def steady(target: tuple[str, int], wire: bytes, source: str, duration: float, qps: float) -> Tally:
    """One query at a time from `source`, `qps` per second, waiting up to 1 s for each answer."""
    tally = Tally()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(1.0)
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            n += 1
            query = struct.pack("!H", n & 0xFFFF) + wire[2:]
            s.sendto(query, target)
            tally.sent += 1
            tally.sent_bytes += len(query)
            try:
                while True:
                    data = s.recv(65535)
                    if data[:2] == query[:2]:
                        tally.count(data)
                        break
            except TimeoutError:
                pass
            pause = start + n / qps - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        tally.seconds = time.monotonic() - start
    return tally


def tcp_queries(target: tuple[str, int], wire: bytes, source: str, count: int, interval: float) -> Tally:
    """`count` queries over TCP from `source` (a connection each), `interval` s apart."""
    tally = Tally()
    for n in range(count):
        query = struct.pack("!H", n) + wire[2:]
        tally.sent += 1
        tally.sent_bytes += len(query)
        try:
            with socket.create_connection(target, timeout=3.0, source_address=(source, 0)) as s, s.makefile("rb") as f:
                s.sendall(struct.pack("!H", len(query)) + query)
                (length,) = struct.unpack("!H", f.read(2))
                tally.count(f.read(length))
        except (OSError, struct.error):
            pass
        time.sleep(interval)
    return tally

@dataclass
class Attack:
    """One flood with a polite network and a TCP client beside it."""

    flood: Tally = field(default_factory=Tally)
    good: Tally = field(default_factory=Tally)
    tcp: Tally = field(default_factory=Tally)


def attack(
    target: tuple[str, int],
    duration: float,
    flood_qps: float,
    good_qps: float,
    sources: int = 50,
    tcp_count: int = 5,
    flood_net: str = FLOOD_NET,
    good_net: str = GOOD_NET,
) -> Attack:
    """The flood from `flood_net`.1..`sources`, the polite client at `good_net`.1, TCP from `flood_net`.7."""
    wire = big_query()
    result = Attack()
    threads = [
        threading.Thread(target=lambda: setattr(result, "good", steady(target, wire, f"{good_net}.1", duration, good_qps))),
        threading.Thread(
            target=lambda: setattr(result, "tcp", tcp_queries(target, wire, f"{flood_net}.7", tcp_count, duration / max(1, tcp_count)))
        ),
    ]
    for t in threads:
        t.start()
    result.flood = udp_flood(target, wire, [f"{flood_net}.{i}" for i in range(1, sources + 1)], duration, flood_qps)
    for t in threads:
        t.join()
    return result


# ---------------------------------------------------------------- running servers


@contextlib.contextmanager
def serving(host: str, flags: list[str], log_path: Path):
    """`geodns serve` on host:PORT with the example zone and `flags`; yields (host, port)."""
    sys.path.insert(0, str(REPO / "tests"))
    from netutil import free_port

    port = free_port(host)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    args = [
        sys.executable, "-m", "geodns", "serve", "--zones", str(REPO / "zones" / "example.yaml"),
        "--geoip", str(REPO / "data" / "geoip-bundle.mmdb"), "--state", "none", "--admin", "none",
        "--listen", f"{host}:{port}", *flags,
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        probe = big_query(qtype=1, name="www.gslb.example.test")
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"geodns serve did not start:\n{log_path.read_text(errors='replace')}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.3)
                s.sendto(probe, (host, port))
                try:
                    s.recv(4096)
                    break
                except OSError:
                    time.sleep(0.1)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # a stuck server: ours, by its pid
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- what RRL costs per query


def cost(workload: Path, geoip: Path, rounds: int, count: int) -> dict[str, list[float]]:
    """CPU microseconds per query of the batched UDP path (`BatchedUDP.on_readable`, the
    level-0 cache and `answer()`), fed the workload's queries in batches of 64 from 127.0.0.1,
    with RRL off, on with that source exempt, and on for it (a rate nothing reaches, so that
    every response is decided). Only the socket calls are replaced: recvmmsg hands out the
    prepared batches, sendmmsg counts. CPU time (not wall time), variants interleaved."""
    from geodns.control.controller import Controller
    from geodns.dns.rrl import Limiter, RRLSettings
    from geodns.dns.server import BatchedUDP
    from geodns.dns.stats import Stats

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cookies import read_bin  # bench/cookies.py: a bench workload's queries

    queries = read_bin(workload, count)
    sockaddr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 40000) + socket.inet_aton("127.0.0.1") + bytes(8)
    batches = [[(q, sockaddr) for q in queries[i:i + 64]] for i in range(0, len(queries), 64)]
    variants = {
        "off": None,
        "on, source exempt": RRLSettings(rate=50, slip=2, window=2, exempt=("127.0.0.1/32",)),
        "on, every response decided": RRLSettings(rate=1e6, slip=2, window=2),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(rounds):
            for name, settings in variants.items():
                # A node of its own (a new snapshot and answer cache) for each variant and round.
                controller = Controller(str(REPO / "zones" / "example.yaml"), str(geoip), None)
                controller.start()
                limiter = Limiter(settings) if settings is not None else None
                udp = BatchedUDP(sock, controller.ref, Stats(), rrl=limiter)
                # Two passes warm every cache level (level 0 admits a query on its second
                # sighting), so the third measures the fast path, where RRL weighs most.
                feed = iter(batches * 3)
                sent = [0]
                udp._recv = lambda fd, n, feed=feed: next(feed, [])
                udp._send = lambda fd, out, sent=sent: sent.__setitem__(0, sent[0] + len(out))
                udp.MAX_ROUNDS = len(batches)
                udp.on_readable()
                udp.on_readable()
                started = time.process_time()
                udp.on_readable()
                results[name].append((time.process_time() - started) / len(queries) * 1e6)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20)
    ap.add_argument("--window", type=float, default=1)
    ap.add_argument("--slip", type=int, default=2)
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--flood-qps", type=float, default=3000)
    ap.add_argument("--good-qps", type=float, default=None, help="the other network's rate, from one socket (default 0.75 x rate)")
    ap.add_argument("--host", default="127.0.8.53")
    ap.add_argument("--cost", type=Path, metavar="WORKLOAD.bin", help="instead: CPU per query of the batched path with RRL off and on, over this bench workload")
    ap.add_argument("--geoip", type=Path, default=REPO / "data" / "geoip-bundle.mmdb", help="with --cost: the GeoIP file")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if args.cost is not None:
        sys.path.insert(0, str(REPO))
        results = cost(args.cost, args.geoip, args.rounds, 100_000)
        base = statistics.median(results["off"])
        print(f"CPU per query over {args.cost.name} (first 100,000 queries, batches of 64), median of {args.rounds} interleaved rounds\n")
        print("| RRL | µs per query (median) | min–max | queries per core-s | vs off |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in results.items():
            m = statistics.median(values)
            print(f"| {name} | {m:.3f} | {min(values):.3f}–{max(values):.3f} | {1e6 / m:,.0f} | {base / m:.3f} |")
        return 0
    if args.good_qps is None:
        args.good_qps = 0.75 * args.rate
    rrl = ["--rrl-rate", f"{args.rate:g}", "--rrl-window", f"{args.window:g}", "--rrl-slip", str(args.slip)]
    cases = [
        ("RRL off, 1 worker", ["--workers", "1"]),
        ("RRL on, 1 worker", ["--workers", "1", *rrl]),
        ("RRL on, 2 workers, shared table", ["--workers", "2", *rrl, "--rrl-share", "shared"]),
        ("RRL on, 2 workers, rate divided", ["--workers", "2", *rrl, "--rrl-share", "divided"]),
    ]
    limit = args.rate * (args.duration + args.window)
    print(f"flood: {args.flood_qps:g} q/s of `big` TXT (EDNS 4096) from {FLOOD_NET}.1-50 for {args.duration:g} s; "
          f"{GOOD_NET}.1 at {args.good_qps:g} q/s; TCP from {FLOOD_NET}.7; rate {args.rate:g}/s, window {args.window:g} s, "
          f"slip {args.slip}: RRL allows at most {limit:g} full answers\n")
    print("| case | flood sent | full answers | slipped (TC) | bytes out / in | other network answered | TCP answered |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in cases:
            with serving(args.host, flags, Path(tmp) / "serve.log") as target:
                time.sleep(0.5)
                r = attack(target, args.duration, args.flood_qps, args.good_qps)
            f = r.flood
            print(
                f"| {label} | {f.sent:,} | {f.full:,} | {f.truncated:,} | {f.amplification:.2f} "
                f"| {r.good.full}/{r.good.sent} | {r.tcp.full}/{r.tcp.sent} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
