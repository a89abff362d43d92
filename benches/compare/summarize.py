#!/usr/bin/env python3
"""Summarizes `loadgen compare --json` runs (benches/compare/run.sh) into markdown tables:
per scenario and target, the median of each figure over the runs and its spread (min-max)."""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def fig(report, cost, scenario):
    lat = report.get("latency") or {}
    if scenario.startswith("bulk"):
        thr = (report.get("mb_per_s_up") or 0) + (report.get("mb_per_s_down") or 0)
    elif scenario.startswith("rate"):
        thr = report.get("handshakes_per_s") or 0
    elif scenario.startswith("idle"):
        thr = report.get("survived") or 0
    else:
        thr = report.get("msgs_per_s") or 0
    return {
        "throughput": thr,
        "p50": lat.get("p50_us"),
        "p99": lat.get("p99_us"),
        "cpu": cost.get("cpu_us_per_unit") if cost else None,
        "rss": cost.get("rss_per_conn_bytes") if cost else None,
    }


def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def fmt(m, lo, hi, digits=1):
    if m is None:
        return "-"
    if lo == hi:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def main(out):
    runs = defaultdict(lambda: defaultdict(list))
    machine = None
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        scenario = os.path.basename(path).rsplit(".", 2)[0]
        try:
            d = json.load(open(path))
        except (OSError, ValueError):
            continue  # a run still being written, or one that failed
        machine = machine or d.get("machine")
        for t in d["targets"]:
            runs[scenario][t["name"]].append(fig(t["report"], t.get("gateway"), scenario))
        for s in d.get("skipped", []):
            runs[scenario].setdefault(f"(skipped: {s})", [])
    if machine:
        print(f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), kernel {machine.get('kernel')}\n")
    for scenario, targets in runs.items():
        unit = {"bulk": "MB/s (up+down)", "rate": "handshakes/s", "idle": "survived"}.get(
            scenario.split("-")[0], "msgs/s")
        cpu_unit = {"bulk": "CPU µs/MB", "rate": "CPU µs/handshake", "idle": "CPU µs/conn"}.get(
            scenario.split("-")[0], "CPU µs/msg")
        print(f"### {scenario}\n")
        print(f"| target | {unit} | p50 µs | p99 µs | gateway {cpu_unit} | RSS/conn (idle) |")
        print("|---|---|---|---|---|---|")
        for name, figs in targets.items():
            if not figs:
                print(f"| {name} | | | | | |")
                continue
            cols = [med([f[k] for f in figs]) for k in ("throughput", "p50", "p99", "cpu", "rss")]
            rss = cols[4]
            rss_s = "-" if rss[0] is None else fmt(rss[0] / 1024, rss[1] / 1024, rss[2] / 1024) + " KiB"
            print(f"| {name} | {fmt(*cols[0], 0)} | {fmt(*cols[1], 0)} | {fmt(*cols[2], 0)} | {fmt(*cols[3], 2)} | {rss_s} |")
        print(f"\n({len(next(iter(targets.values())))} runs; median, min–max in parentheses)\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/compare")
