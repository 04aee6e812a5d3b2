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


def runs(folder: Path, workers: int, name: str, suffix: str = "") -> list[str]:
    """The texts of one balancer's runs, round by round."""
    files = sorted(folder.glob(f"w{workers}-{name}-*{suffix}.txt"), key=lambda f: int(f.stem.split("-")[2]))
    return [f.read_text() for f in files if f.stem.endswith(suffix) and (suffix or f.stem.count("-") == 2)]


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--workers", type=int, nargs="+", required=True)
    args = ap.parse_args()
    names = (("geodns", "geodns balance --workers {n}"), ("haproxy", "HAProxy nbthread {n}"))
    print("At saturation (wrk closed loop). Per core: requests per CPU-second of the balancer's own processes.")
    print()
    print("| cores | balancer | requests/s (median) | per core: req/CPU-s (median) | p99 ms (median) | errors |"
          " rounds: req/s (req/CPU-s) |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for n in args.workers:
        medians = {}
        for name, label in names:
            texts = runs(args.folder, n, name)
            rows = [parse(t) for t in texts]
            per_core = [cpu_rate(t) for t in texts]
            known = [c for c in per_core if c is not None]
            rps = statistics.median(r[0] for r in rows)
            p99 = statistics.median(r[1] for r in rows)
            core = statistics.median(known) if known else None
            medians[name] = (rps, p99, core)
            each = ", ".join(f"{r[0]:,.0f} ({c:,.0f})" if c else f"{r[0]:,.0f}" for r, c in zip(rows, per_core, strict=True))
            core_text = f"{core:,.0f}" if core else "-"
            print(f"| {n} | {label.format(n=n)} | {rps:,.0f} | {core_text} | {p99:.2f} | {sum(r[2] for r in rows)} | {each} |")
        (g_rps, g_p99, g_core), (h_rps, h_p99, h_core) = medians["geodns"], medians["haproxy"]
        print(f"| {n} | geodns / HAProxy | {ratio(g_rps, h_rps)} | {ratio(g_core, h_core)} | {ratio(g_p99, h_p99)} | | |")
    paced = {n: {name: runs(args.folder, n, name, "-load") for name, _ in names} for n in args.workers}
    if not any(t for by in paced.values() for t in by.values()):
        return
    print()
    print("Paced: both at the same offered rate, LOAD x geodns's requests/s of the round.")
    print()
    print("| cores | balancer | offered req/s (median) | achieved req/s (median) | p99 ms (median) | errors | rounds: p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---|")
    for n in args.workers:
        p99s = {}
        for name, label in names:
            texts = paced[n][name]
            if not texts:
                continue
            rows = [parse(t) for t in texts]
            offered = [float(re.search(r"^offered_rate (\d+)", t, re.M).group(1)) for t in texts]
            p99 = statistics.median(r[1] for r in rows)
            p99s[name] = p99
            print(f"| {n} | {label.format(n=n)} | {statistics.median(offered):,.0f} | "
                  f"{statistics.median(r[0] for r in rows):,.0f} | {p99:.2f} | {sum(r[2] for r in rows)} | "
                  f"{', '.join(f'{r[1]:.2f}' for r in rows)} |")
        if len(p99s) == 2:
            print(f"| {n} | geodns / HAProxy | | | {ratio(p99s['geodns'], p99s['haproxy'])} | | |")


if __name__ == "__main__":
    main()
