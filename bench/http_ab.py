"""Two versions of `geodns balance` side by side, under the same load at the same time:
CPU time per request of each, in one-second windows. On a shared machine, where wrk
figures move by 2-3x between runs, this is the fairer before/after comparison.

    git worktree add ../before <commit>          # or: git archive <commit> | tar -x -C ../before
    python3 bench/http_ab.py ../before . --seconds 40

Each tree runs `python -m geodns.balance --workers 1` (with that tree on
PYTHONPATH) in front of one single-threaded HAProxy that answers a fixed 200;
wrk -c25 loads each balancer. CPU time comes from /proc/PID/stat, requests from
the balancer's own /metrics. Needs haproxy and wrk on PATH; Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.4.217"

BACKEND_CFG = """global
  nbthread 1
defaults
  mode http
  timeout connect 3s
  timeout client 60s
  timeout server 60s
frontend b0
  bind {host}:{port}
  http-request return status 200 content-type text/plain string "hello from b0"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def served(admin: int) -> float:
    text = urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^geodns_balance_requests_total\{[^}]*\} (\S+)$", text, re.M))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="source trees to compare (the first is the baseline)")
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--connections", type=int, default=25)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    backend = free_port()
    (tmp / "backend.cfg").write_text(BACKEND_CFG.format(host=HOST, port=backend))
    procs = [subprocess.Popen(["haproxy", "-q", "-f", str(tmp / "backend.cfg")])]
    balancers: dict[str, tuple[subprocess.Popen[bytes], int, int]] = {}
    try:
        for i, tree in enumerate(args.trees):
            port, admin = free_port(), free_port()
            cfg = tmp / f"tree{i}.yaml"
            cfg.write_text(f"listen: {HOST}:{port}\nadmin: {{listen: {HOST}:{admin}}}\n"
                           f"pools:\n  web:\n    max_conns: 10000\n    backends: [{HOST}:{backend}]\n")
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            p = subprocess.Popen([sys.executable, "-m", "geodns.balance", "--config", str(cfg), "--workers", "1",
                                  "--log-level", "warning"], cwd=tree, env=env)
            procs.append(p)
            balancers[f"{i}: {tree}"] = (p, port, admin)
        deadline = time.monotonic() + 60
        while True:
            try:
                for _, _, admin in balancers.values():
                    served(admin)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        load = [subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 3}s",
                                  f"http://{HOST}:{port}/"], stdout=subprocess.DEVNULL)
                for _, port, _ in balancers.values()]
        time.sleep(2)
        samples: dict[str, list[float]] = {name: [] for name in balancers}
        last = {name: (cpu_seconds(p.pid), served(a)) for name, (p, _, a) in balancers.items()}
        for _ in range(args.seconds):
            time.sleep(1)
            for name, (p, _, admin) in balancers.items():
                now = (cpu_seconds(p.pid), served(admin))
                cpu, requests = now[0] - last[name][0], now[1] - last[name][1]
                last[name] = now
                if requests > 100:
                    samples[name].append(cpu / requests * 1e6)
        for w in load:
            w.wait()
        print(f"CPU microseconds per request, {args.seconds} one-second windows, wrk -c{args.connections} on each")
        print()
        print("| tree | windows | min | p25 | median |")
        print("|---|---:|---:|---:|---:|")
        for name, xs in samples.items():
            xs.sort()
            if xs:
                print(f"| {name} | {len(xs)} | {xs[0]:.1f} | {xs[len(xs) // 4]:.1f} | {statistics.median(xs):.1f} |")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
