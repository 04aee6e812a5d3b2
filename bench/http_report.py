"""Read two `wrk --latency` outputs (geodns balance, HAProxy); print a markdown table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse(text: str) -> tuple[float, float, int]:
    """Requests/s, p99 in ms, and non-2xx plus socket errors from one wrk run."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", text, re.M).groups()
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", text))
    for m in re.finditer(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors += sum(int(g) for g in m.groups())
    return rps, float(value) * UNITS[unit], errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("geodns")
    ap.add_argument("haproxy")
    ap.add_argument("--setting", default="")
    args = ap.parse_args()
    g_rps, g_p99, g_err = parse(Path(args.geodns).read_text())
    h_rps, h_p99, h_err = parse(Path(args.haproxy).read_text())
    if args.setting:
        print(f"{args.setting}\n")
    print("| balancer | requests/s | p99 (ms) | errors |")
    print("|---|---:|---:|---:|")
    print(f"| geodns balance | {g_rps:,.0f} | {g_p99:.2f} | {g_err} |")
    print(f"| HAProxy | {h_rps:,.0f} | {h_p99:.2f} | {h_err} |")
    print(f"| geodns / HAProxy | {g_rps / h_rps:.2f}x | {g_p99 / h_p99:.2f}x | |")


if __name__ == "__main__":
    main()
