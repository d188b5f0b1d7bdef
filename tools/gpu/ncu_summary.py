#!/usr/bin/env python3
"""Sums Nsight Compute's per-launch GPU times by kernel: which kernels a training step spends its
GPU time in. Reads the CSV that

    ncu --csv --print-units base --metrics gpu__time_duration.sum --clock-control none \\
        --log-file ncu.csv finetune-studio train ...

writes (one row per kernel launch), prints a Markdown table of the kernels with the most time.

    python3 tools/gpu/ncu_summary.py ncu.csv [TOP=30]
"""
import csv
import sys
from collections import defaultdict


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) == 3 else 30
    with open(sys.argv[1], newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    total = defaultdict(float)
    count = defaultdict(int)
    grid = {}
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"nsecond": 1.0, "ns": 1.0, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}.get(
            row.get("Metric Unit", "ns"), 1.0
        )
        name = row["Kernel Name"]
        total[name] += value * scale
        count[name] += 1
        grid.setdefault(name, row.get("Grid Size", ""))
    all_ns = sum(total.values())
    print(f"{sum(count.values())} launches, {all_ns / 1e6:.1f} ms of GPU time in {len(total)} kernels\n")
    print("| kernel | launches | total ms | share | first grid |")
    print("|---|---:|---:|---:|---|")
    for name, ns in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        print(f"| `{short}` | {count[name]} | {ns / 1e6:.2f} | {100 * ns / all_ns:.1f} % | {grid[name]} |")


if __name__ == "__main__":
    main()
