"""Read the `wrk --latency` outputs of bench/http.sh; print one markdown table of medians.

Files are `w{N}-{geodns|haproxy}-{round}.txt` in one directory: geodns balance
with N workers and HAProxy with nbthread N, round by round.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def cpu_rate(text: str) -> float | None:
    """Requests per CPU-second of the balancer in one run (bench/http.sh's `cpu_seconds` line)."""
    cpu = re.search(r"^cpu_seconds ([\d.]+)$", text, re.M)
    done = re.search(r"^\s*(\d+) requests in", text, re.M)
    if cpu is None or done is None or float(cpu.group(1)) == 0:
        return None
    return int(done.group(1)) / float(cpu.group(1))


def parse(text: str) -> tuple[float, float, int]:
    """Requests/s, p99 in ms, and non-2xx plus socket errors from one wrk run."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", text))
    for m in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in m.groups())
    return rps, float(value) * UNITS[unit], errors


def runs(folder: Path, workers: int, name: str) -> list[tuple[float, float, int]]:
    files = sorted(folder.glob(f"w{workers}-{name}-*.txt"), key=lambda f: int(f.stem.rsplit("-", 1)[1]))
    return [parse(f.read_text()) for f in files]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", required=True)
    args = ap.parse_args()
    print("| cores | balancer | requests/s (median) | p99 ms (median) | errors | rounds (req/s) |")
    print("|---:|---|---:|---:|---:|---|")
    for n in args.workers:
        medians = {}
        for name, label in (("geodns", f"geodns balance --workers {n}"), ("haproxy", f"HAProxy nbthread {n}")):
            rows = runs(args.folder, n, name)
            rps = statistics.median(r[0] for r in rows)
            p99 = statistics.median(r[1] for r in rows)
            medians[name] = (rps, p99)
            each = ", ".join(f"{r[0]:,.0f}" for r in rows)
            print(f"| {n} | {label} | {rps:,.0f} | {p99:.2f} | {sum(r[2] for r in rows)} | {each} |")
        (g_rps, g_p99), (h_rps, h_p99) = medians["geodns"], medians["haproxy"]
        print(f"| {n} | geodns / HAProxy | {g_rps / h_rps:.2f}x | {g_p99 / h_p99:.2f}x | | |")


if __name__ == "__main__":
    main()
