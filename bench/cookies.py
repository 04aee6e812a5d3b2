#!/usr/bin/env python3
"""What a DNS cookie costs per query: `answer()` in process (no sockets), the same queries
without a cookie (with and without level 0, the exact-query cache), with a client cookie alone
(a new server cookie each time: levels 1-2 and a hash), with a valid server cookie (echoed: level
0 serves it to its client), and with one older than half an hour (renewed: two hashes).

    python3 bench/cookies.py                 # the bench's main and hot workloads when built
    python3 bench/cookies.py --queries 20000 # else (or also) synthetic ones over the bundled GeoIP
    python3 bench/cookies.py --wire          # over UDP: `geodns serve` (1 worker, CPU 0) and the
                                             # bench's loadgen (CPU 1), the variants taking turns

Workloads: `main.bin` / `hot.bin` from ../shared/bench/workload (in the bench cache), else a
synthetic main (every query a new /24) and hot (300 /24s) over the bundled GeoIP file.
Rounds alternate the variants and keep each one's best, so that other load on the machine
shows as noise in every row, not as a difference between rows. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geodns.control.controller import Controller  # noqa: E402
from geodns.dns import cookies  # noqa: E402
from geodns.dns.answer import answer  # noqa: E402
from geodns.dns.stats import Stats  # noqa: E402

CLIENT = "127.0.0.1"


def read_bin(path: Path, limit: int) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 2 <= len(data) and len(out) < limit:
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def synthetic(count: int, networks: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    nets = [rng.randrange(1 << 24) for _ in range(networks)]
    qname = b"".join(bytes([len(p)]) + p for p in b"www.gslb.example.test".split(b".")) + b"\0"
    out = []
    for i in range(count):
        net = nets[i % networks] if networks < count else rng.randrange(1 << 24)
        ecs = struct.pack("!HHHBB", 8, 7, 1, 24, 0) + net.to_bytes(3, "big")
        out.append(struct.pack("!HHHHHH", rng.randrange(65536), 0, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1)
                   + b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(ecs)) + ecs)
    return out


def with_cookie(query: bytes, cookie: bytes) -> bytes:
    """The query (one question, its OPT record last) with a COOKIE option appended."""
    pos = 12
    while query[pos]:
        pos += query[pos] + 1
    opt = pos + 5
    (rdlen,) = struct.unpack_from("!H", query, opt + 9)
    option = struct.pack("!HH", 10, len(cookie)) + cookie
    return query[: opt + 9] + struct.pack("!H", rdlen + len(option)) + query[opt + 11 :] + option


def variants(queries: list[bytes]) -> dict[str, list[bytes]]:
    address = cookies.packed_address(CLIENT)
    secret = cookies.active().current
    now = int(time.time())
    out: dict[str, list[bytes]] = {"no cookie": queries, "client cookie": [], "valid server cookie": [],
                                   "server cookie 40 min old": []}
    rng = random.Random(5)
    for q in queries:
        client = rng.randbytes(8)
        out["client cookie"].append(with_cookie(q, client))
        out["valid server cookie"].append(with_cookie(q, client + cookies.server_cookie(secret, client, address, now)))
        out["server cookie 40 min old"].append(
            with_cookie(q, client + cookies.server_cookie(secret, client, address, now - 2400)))
    return out


def run(snapshot, queries: list[bytes]) -> float:
    """Seconds for answering `queries` once (wall clock)."""
    stats = Stats()
    clock = time.perf_counter
    started = clock()
    now = time.time()  # as a transport: one clock read per batch
    for data in queries:
        answer(snapshot, data, CLIENT, now, True, stats)
    return clock() - started


def measure(snapshot, sets: dict[str, list[bytes]], rounds: int, chunk: int = 500) -> dict[str, float]:
    """Seconds per query for each variant: per chunk of queries the best of `rounds`, the variants
    taking turns chunk by chunk, so that load from elsewhere hits every variant alike."""
    n = len(next(iter(sets.values())))
    best = {name: [float("inf")] * ((n + chunk - 1) // chunk) for name in sets}
    names = list(sets)
    for r in range(rounds):
        for i, start in enumerate(range(0, n, chunk)):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                best[name][i] = min(best[name][i], run(snapshot, sets[name][start : start + chunk]))
    return {name: sum(times) / n for name, times in best.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=50_000, help="queries per workload (default 50,000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synthetic", action="store_true", help="synthetic workloads even when the bench's exist")
    parser.add_argument("--wire", action="store_true", help="over UDP against `geodns serve` with the bench's loadgen")
    parser.add_argument("--seconds", type=float, default=5.0, help="with --wire: seconds per turn (default 5)")
    args = parser.parse_args()
    if args.wire:
        return wire(args)

    cache = Path(os.environ.get("GEODNS_CACHE", Path.home() / ".cache" / "geodns")) / "bench" / "workloads"
    found = sorted(cache.glob("*/main.bin"))
    geoip = REPO / "data" / "geoip-bundle.mmdb"
    workloads: dict[str, list[bytes]] = {}
    if found and not args.synthetic:
        for name in ("main", "hot"):
            if (found[0].parent / f"{name}.bin").exists():
                workloads[name] = read_bin(found[0].parent / f"{name}.bin", args.queries)
        db = Path(os.environ.get("DB", cache.parents[1] / "geoip" / "dbip-city-geoip2.mmdb"))
        geoip = db if db.exists() else geoip
    else:
        workloads["main (synthetic)"] = synthetic(args.queries, args.queries, 1)
        workloads["hot (synthetic)"] = synthetic(args.queries, 300, 2)

    controller = Controller(str(REPO / "zones" / "example.yaml"), str(geoip))
    snapshot = controller.start()
    extension = "C scanner" if cookies_fast_path() else "Python scanner (C extension not built)"
    print(f"geodns answer() per query, in process, {extension}, GeoIP {geoip.name}, best of {args.rounds} rounds")
    print(f"{'workload':<18} {'variant':<26} {'us/query':>9} {'vs no cookie':>13} {'vs no level 0':>15}")
    for wname, queries in workloads.items():
        sets = variants(queries)
        for q in sets.values():  # warm every cache level (level 0 admits on a second sighting)
            run(snapshot, q)
            run(snapshot, q)
        result = measure(snapshot, sets, args.rounds)
        # The same queries with level 0 (the exact-query cache, which never holds a cookie's
        # answer) off: what a query costs through levels 1-2 and the patch alone.
        snapshot.cache.level0 = False
        snapshot.cache.packets.clear()
        result["no cookie, level 0 off"] = measure(snapshot, {"x": queries}, args.rounds)["x"]
        snapshot.cache.level0 = True
        for q in queries:
            answer(snapshot, q, CLIENT, time.time(), True, Stats())
            answer(snapshot, q, CLIENT, time.time(), True, Stats())
        base, levels = result["no cookie"], result["no cookie, level 0 off"]
        for name in ("no cookie", "no cookie, level 0 off", *list(sets)[1:]):
            t = result[name]
            delta = "" if name == "no cookie" else f"{(t - base) * 1e6:+.2f} us"
            extra = f"{(t - levels) * 1e6:+.2f} us" if name not in ("no cookie", "no cookie, level 0 off") else ""
            print(f"{wname:<18} {name:<26} {t * 1e6:>9.2f} {delta:>13} {extra:>15}")
    return 0


def wire(args: argparse.Namespace) -> int:
    """The variants of the main workload over UDP against one `geodns serve` process: queries/s
    and the server's CPU time per query (from /proc, so that other load on the machine counts
    less than in queries/s)."""
    import shutil
    import signal
    import statistics
    import subprocess
    import tempfile

    root = Path(os.environ.get("GEODNS_CACHE", Path.home() / ".cache" / "geodns")) / "bench"
    loadgen = root / "bin" / "loadgen"
    main_bin = next(iter(sorted(root.glob("workloads/*/main.bin"))), None)
    if not loadgen.exists() or main_bin is None:
        print("needs the bench's loadgen and main workload (../shared/bench: build-loadgen, workload)", file=sys.stderr)
        return 2
    db = root.parent / "geoip" / "dbip-city-geoip2.mmdb"
    geoip = db if db.exists() else REPO / "data" / "geoip-bundle.mmdb"
    tmp = Path(tempfile.mkdtemp(prefix="geodns-cookies-"))
    secret = os.urandom(16)
    (tmp / "cookie.key").write_text(secret.hex() + "\n")
    cookies.configure(cookies.CookieSecrets(secret))
    files = {}
    for name, queries in variants(read_bin(main_bin, 100_000)).items():
        files[name] = tmp / f"{name.replace(' ', '-')}.bin"
        files[name].write_bytes(b"".join(struct.pack("!H", len(q)) + q for q in queries))
    sys.path.insert(0, str(REPO / "tests"))
    from netutil import free_port

    port = free_port("127.0.0.1")
    pin = shutil.which("taskset")
    cmd = [sys.executable, "-m", "geodns", "serve", "--zones", str(REPO / "zones" / "example.yaml"), "--geoip", str(geoip),
           "--state", "none", "--admin", "none", "--workers", "1", "--listen", f"127.0.0.1:{port}",
           "--cookie-secret-file", str(tmp / "cookie.key")]
    server = subprocess.Popen((([pin, "-c", "0"] if pin else []) + cmd), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=None, env={**os.environ, "PYTHONPATH": str(REPO)})

    def cpu() -> float:
        with open(f"/proc/{server.pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def load(path: Path, seconds: float) -> dict:
        argv = ([pin, "-c", "1"] if pin else []) + [str(loadgen), "-f", str(path), "-p", str(port), "-c", "256",
                                                   "-d", str(seconds), "--json"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
        import json

        return json.loads(out.strip().splitlines()[-1])

    try:
        wait_answering(server, port)
        for path in files.values():  # warm: every level, twice (level 0 admits on a second sighting)
            load(path, 4)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in files}
        names = list(files)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                before = cpu()
                got = load(files[name], args.seconds)
                used = cpu() - before
                results[name].append((got["qps"], used / max(1, got["received"])))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"geodns serve (1 worker) over UDP, main workload (100k client /24s, ECS), GeoIP {geoip.name}; "
          f"median of {args.rounds} turns of {args.seconds:g} s")
    print(f"{'variant':<26} {'queries/s':>10} {'server CPU us/query':>20} {'vs no cookie':>13}")
    base = statistics.median(c for _, c in results["no cookie"])
    for name, runs in results.items():
        qps = statistics.median(q for q, _ in runs)
        per = statistics.median(c for _, c in runs)
        delta = "" if name == "no cookie" else f"{(per - base) * 1e6:+.2f} us"
        print(f"{name:<26} {qps:>10.0f} {per * 1e6:>20.2f} {delta:>13}")
    return 0


def wait_answering(server, port: int, timeout: float = 60.0) -> None:
    import socket

    query = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\0\0\x02\0\x01"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"geodns serve exited with {server.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.3)
            s.sendto(query, ("127.0.0.1", port))
            try:
                s.recv(512)
                return
            except OSError:
                continue
    raise SystemExit(f"geodns serve did not answer on 127.0.0.1:{port}")


def cookies_fast_path() -> bool:
    try:
        from geodns.dns import _scan  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
