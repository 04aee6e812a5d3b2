#!/usr/bin/env python3
"""Summarise a bench/dns.sh run (the compare JSON files in one folder) as Markdown tables."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(folder: Path) -> int:
    print(row(["workload", "gdnsd q/s", "gdnsd q/core-s", "geodns q/s", "geodns q/core-s",
               "per-core ratio", "loss gdnsd / geodns", "p99 at half rate gdnsd / geodns", "wrong answers"]))
    print(row(["---"] + ["---:"] * 8))
    order = {"main": 0, "main-warm": 1, "hot": 2, "miss": 3}
    for path in sorted(folder.glob("*.json"), key=lambda p: (order.get(p.stem, 9), p.stem)):
        if path.stem == "workers":
            continue
        doc = json.loads(path.read_text())
        a, b = doc["servers"]
        wrong = "/".join(str((s["verify"] or {}).get("mismatch", "-")) for s in (a, b))
        print(row([
            path.stem,
            f"{a['qps']:,.0f} {a['qps_spread']}", f"{a['per_core']:,.0f} {a['per_core_spread']}",
            f"{b['qps']:,.0f} {b['qps_spread']}", f"{b['per_core']:,.0f} {b['per_core_spread']}",
            f"**{b['per_core'] / a['per_core']:.2f}**" if a["per_core"] else "-",
            f"{a['loss']:.3f} / {b['loss']:.3f} %",
            f"{a['lat_p99']:,.0f} / {b['lat_p99']:,.0f} µs (at {a['rate']:,.0f} / {b['rate']:,.0f} q/s)",
            wrong,
        ]))
    workers = folder / "workers.json"
    if workers.exists():
        doc = json.loads(workers.read_text())
        print()
        print(row(["geodns, main, both on CPU 0", "q/s", "q/core-s", "loss", "p99 at half rate"]))
        print(row(["---", "---:", "---:", "---:", "---:"]))
        for s in doc["servers"]:
            print(row([s["name"], f"{s['qps']:,.0f} {s['qps_spread']}", f"{s['per_core']:,.0f} {s['per_core_spread']}",
                       f"{s['loss']:.3f} %", f"{s['lat_p99']:,.0f} µs"]))
    noisy = sum(s["noisy_runs"] for p in folder.glob("*.json") for s in json.loads(p.read_text())["servers"])
    if noisy:
        print(f"\nWARNING: {noisy} run(s) had other processes taking >5% CPU: noisy")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
