#!/usr/bin/env python3
"""Summarizes `loadgen compare --json` runs (benches/compare/run.sh) into markdown tables.

    python3 benches/compare/summarize.py OUT            # one table per scenario
    python3 benches/compare/summarize.py OUT --goals    # plus issue 14's goals table
    python3 benches/compare/summarize.py OUT --tls      # issue 13's TLS table only

Per scenario and target: the median of each figure over the runs and its spread (min-max).
Figures against direct (throughput ratio, added p50 latency) and between gateways (CPU
ratios) are taken within each run first, then their median: both sides of a ratio were
measured in the same run, minutes apart at most, so the load of a shared machine cancels
out better than in a ratio of two medians."""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict


def kind_of(scenario):
    """rate-c32 -> rate; tls-rate-full-c8 -> rate."""
    return scenario.removeprefix("tls-").split("-")[0]


def thr(report, scenario):
    k = kind_of(scenario)
    if k == "bulk":
        return (report.get("mb_per_s_up") or 0) + (report.get("mb_per_s_down") or 0)
    if k == "rate":
        return report.get("handshakes_per_s") or 0
    if k == "idle":
        return report.get("survived") or 0
    if k == "storm":
        return report.get("conns_per_s")
    return report.get("msgs_per_s") or 0


def fig(report, cost, scenario, direct):
    lat = report.get("latency") or {}
    dlat = (direct or {}).get("latency") or {}
    t = thr(report, scenario)
    dt = thr(direct, scenario) if direct else None
    p50, dp50 = lat.get("p50_us"), dlat.get("p50_us")
    return {
        "throughput": t,
        "thr_ratio": t / dt if t is not None and dt else None,
        "p50": p50,
        "added_p50": p50 - dp50 if p50 is not None and dp50 is not None else None,
        "p99": lat.get("p99_us"),
        "cpu": cost.get("cpu_us_per_unit") if cost else None,
        "rss": cost.get("rss_per_conn_bytes") if cost else None,
        "established": report.get("established"),
        "established_s": report.get("established_s"),
        "errors": report.get("errors", 0),
        "resumed_share": resumed_share(report),
    }


def resumed_share(report):
    t = report.get("tls")
    if not t:
        return None
    n = t["full_handshakes"] + t["resumed_handshakes"]
    return t["resumed_handshakes"] / n if n else None


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


def load(out):
    """{scenario: {target: [fig per run]}}, {scenario: [{target: fig} per run]}, machine."""
    runs = defaultdict(lambda: defaultdict(list))
    per_run = defaultdict(list)
    machine = None
    for path in sorted(glob.glob(os.path.join(out, "*.json"))):
        scenario = os.path.basename(path).rsplit(".", 2)[0]
        try:
            d = json.load(open(path))
        except (OSError, ValueError):
            continue  # a run still being written, or one that failed
        machine = machine or d.get("machine")
        direct = next((t["report"] for t in d["targets"] if t["kind"] == "direct"), None)
        this = {}
        for t in d["targets"]:
            f = fig(t["report"], t.get("gateway"), scenario, direct)
            runs[scenario][t["name"]].append(f)
            this[t["name"]] = f
        per_run[scenario].append(this)
        for s in d.get("skipped", []):
            runs[scenario].setdefault(f"(skipped: {s})", [])
            if scenario.startswith("tls-"):
                SKIPPED.setdefault(s.split(":", 1)[0], s)
    return runs, per_run, machine


# First skip reason seen per target name in a TLS run (the TLS table says why a column is
# empty).
SKIPPED = {}


def tables(runs):
    for scenario, targets in runs.items():
        k = kind_of(scenario)
        unit = {"bulk": "MB/s (up+down)", "rate": "handshakes/s", "idle": "survived",
                "storm": "conns/s"}.get(k, "msgs/s")
        cpu_unit = {"bulk": "CPU µs/MB", "rate": "CPU µs/handshake", "idle": "CPU µs/conn",
                    "storm": "CPU µs/conn"}.get(k, "CPU µs/msg")
        extra = " all established, s | errors |" if k == "storm" else ""
        print(f"### {scenario}\n")
        print(f"| target | {unit} | ÷ direct | p50 µs | added p50 µs | p99 µs | gateway {cpu_unit} "
              f"| RSS/conn (idle) |{extra}")
        print("|---|---|---|---|---|---|---|---|" + ("---|---|" if extra else ""))
        for name, figs in targets.items():
            if not figs:
                print(f"| {name} |" + " |" * (9 if extra else 7))
                continue
            col = lambda key: med([f[key] for f in figs])
            rss = col("rss")
            rss_s = "-" if rss[0] is None else fmt(rss[0] / 1024, rss[1] / 1024, rss[2] / 1024) + " KiB"
            row = (f"| {name} | {fmt(*col('throughput'), 0)} | {fmt(*col('thr_ratio'), 2)} "
                   f"| {fmt(*col('p50'), 0)} | {fmt(*col('added_p50'), 0)} | {fmt(*col('p99'), 0)} "
                   f"| {fmt(*col('cpu'), 2)} | {rss_s} |")
            if extra:
                row += f" {fmt(*col('established_s'), 3)} | {fmt(*col('errors'), 0)} |"
            print(row)
        n = max(len(f) for f in targets.values())
        print(f"\n({n} runs; median, min–max in parentheses; ratios and added latency "
              "against direct taken within each run)\n")


# Issue 14's goals table: (label, scenario, figure, scale, digits).
GOAL_ROWS = [
    ("CPU µs per handshake (rate, 32 parallel)", "rate-c32", "cpu", 1, 1),
    ("CPU µs per connection (storm, 5,000 at once)", "storm-5000", "cpu", 1, 1),
    ("storm: s until all 5,000 established", "storm-5000", "established_s", 1, 3),
    ("CPU µs/msg, pingpong 100 × 64 B, closed loop", "pingpong-100x64", "cpu", 1, 2),
    ("CPU µs/msg, pingpong 1000 × 1 KiB, closed loop", "pingpong-1000x1k", "cpu", 1, 2),
    ("CPU µs/msg, 64 B at 20,000 msg/s open loop (100 conns)", "pingpong-r20k-100x64", "cpu", 1, 2),
    ("CPU µs/msg, 1 KiB at 20,000 msg/s open loop (100 conns)", "pingpong-r20k-100x1k", "cpu", 1, 2),
    ("added p50 µs at 20,000 msg/s, 64 B (over direct)", "pingpong-r20k-100x64", "added_p50", 1, 0),
    ("CPU µs/msg, 64 B at 5,000 msg/s open loop (100 conns)", "pingpong-r5k-100x64", "cpu", 1, 2),
    ("added p50 µs at 5,000 msg/s, 64 B (over direct)", "pingpong-r5k-100x64", "added_p50", 1, 0),
    ("bulk 8 × 64 KiB, CPU µs/MB", "bulk-8x64k", "cpu", 1, 0),
    ("bulk throughput, % of direct", "bulk-8x64k", "thr_ratio", 100, 0),
    ("user-space RSS per idle WebSocket (9,000 held), B", "idle-9000", "rss", 1, 0),
]
GOAL_TARGETS = ["ringway-uring", "ringway-epoll", "haproxy", "haproxy-splice", "nginx"]
# The goals as ratios of ringway io_uring to a peer, taken within each run.
GOAL_RATIOS = [
    ("haproxy", "÷ HAProxy"),
    ("nginx", "÷ nginx"),
    ("ringway-epoll", "÷ ringway epoll"),
    ("haproxy-splice", "÷ HAProxy splice"),
]


def measures(runs, per_run, title, rows, targets, ratios, skip=()):
    """A table of `rows` for `targets` (medians), then ringway io_uring's ratio to each of
    `ratios`, taken within each run."""
    print(f"### {title}\n")
    print("| measure | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    for label, scenario, key, scale, digits in rows:
        cells = []
        for t in targets:
            m = med([None if f[key] is None else f[key] * scale
                     for f in runs.get(scenario, {}).get(t, [])])
            cells.append(fmt(*m, digits))
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n#### ringway io_uring against each, ratio within each run\n")
    print("| measure | " + " | ".join(h for _, h in ratios) + " |")
    print("|---|" + "---|" * len(ratios))
    for label, scenario, key, _, _ in rows:
        if key in skip:
            continue
        cells = []
        for peer, _ in ratios:
            vals = []
            for r in per_run.get(scenario, []):
                a = (r.get("ringway-uring") or {}).get(key)
                b = (r.get(peer) or {}).get(key)
                # A ratio of added latencies means nothing once one is at or below direct.
                if a is not None and b and (key != "added_p50" or (a > 0 and b > 0)):
                    vals.append(a / b)
            cells.append(fmt(*med(vals), 2))
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


def goals(runs, per_run):
    measures(runs, per_run, "Issue 14's measures", GOAL_ROWS, GOAL_TARGETS, GOAL_RATIOS,
             skip=("thr_ratio", "established_s"))


# The same goals per thread: every gateway on one thread (run.sh's *-t1 scenarios), the raw
# TCP rows beside the reference relay (benches/relay), the floor of a ring-native proxy.
PER_THREAD_ROWS = [
    ("CPU µs/msg, raw TCP 100 × 64 B", "tcp-pingpong-100x64-t1", "cpu", 1, 2),
    ("CPU µs/msg, raw TCP 100 × 1 KiB", "tcp-pingpong-100x1k-t1", "cpu", 1, 2),
    ("CPU µs/msg, WebSocket 100 × 64 B", "pingpong-100x64-t1", "cpu", 1, 2),
    ("CPU µs/msg, WebSocket 1000 × 1 KiB", "pingpong-1000x1k-t1", "cpu", 1, 2),
    ("CPU µs/msg, 64 B at 20,000 msg/s open loop", "pingpong-r20k-100x64-t1", "cpu", 1, 2),
    ("added p50 µs at 20,000 msg/s, 64 B (over direct)", "pingpong-r20k-100x64-t1",
     "added_p50", 1, 0),
    ("CPU µs per handshake (rate, 32 parallel)", "rate-c32-t1", "cpu", 1, 1),
    ("bulk 8 × 64 KiB, CPU µs/MB", "bulk-8x64k-t1", "cpu", 1, 0),
    ("bulk throughput, % of direct", "bulk-8x64k-t1", "thr_ratio", 100, 0),
]
PER_THREAD_TARGETS = ["ringway-uring", "ringway-epoll", "haproxy", "nginx", "relay-floor"]
PER_THREAD_RATIOS = GOAL_RATIOS[:3] + [("relay-floor", "÷ relay floor")]


def per_thread(runs, per_run):
    if any(s.endswith("-t1") for s in runs):
        measures(runs, per_run, "Issue 14's measures per thread (every gateway on one thread)",
                 PER_THREAD_ROWS, PER_THREAD_TARGETS, PER_THREAD_RATIOS, skip=("thr_ratio",))


# Issue 13's TLS table: (label, scenario, figure, scale, digits).
TLS_ROWS = [
    ("CPU µs per full handshake (rate, 8 parallel, --no-resume)", "tls-rate-full-c8", "cpu", 1, 1),
    ("CPU µs per handshake, resumption on (rate, 8 parallel)", "tls-rate-resumed-c8", "cpu", 1, 1),
    ("  share of those handshakes resumed, %", "tls-rate-resumed-c8", "resumed_share", 100, 0),
    ("CPU µs per MB over TLS (bulk 8 × 64 KiB)", "tls-bulk-8x64k", "cpu", 1, 0),
    ("CPU µs per MB in plaintext (bulk 8 × 64 KiB)", "bulk-8x64k", "cpu", 1, 0),
    ("RSS per idle TLS WebSocket (2,000 held), B", "tls-idle-2000", "rss", 1, 0),
    ("RSS per idle plaintext WebSocket (2,000 held), B", "idle-2000", "rss", 1, 0),
]
TLS_TARGETS = ["ringway-uring", "ringway-epoll", "haproxy", "nginx"]


def tls_table(runs, per_run):
    if not any(s.startswith("tls-") for s in runs):
        return
    print("### TLS (issue 13)\n")
    print("| measure | " + " | ".join(TLS_TARGETS) + " |")
    print("|---|" + "---|" * len(TLS_TARGETS))
    for label, scenario, key, scale, digits in TLS_ROWS:
        cells = []
        for t in TLS_TARGETS:
            m = med([None if f[key] is None else f[key] * scale
                     for f in runs.get(scenario, {}).get(t, [])])
            cells.append(fmt(*m, digits))
        print(f"| {label} | " + " | ".join(cells) + " |")
    # TLS idle RSS ÷ plaintext idle RSS, per target (medians of each: different runs).
    cells = []
    for t in TLS_TARGETS:
        a = med([f["rss"] for f in runs.get("tls-idle-2000", {}).get(t, [])])[0]
        b = med([f["rss"] for f in runs.get("idle-2000", {}).get(t, [])])[0]
        cells.append(f"{a / b:.2f}" if a is not None and b else "-")
    print("| RSS per idle WebSocket, TLS ÷ plaintext | " + " | ".join(cells) + " |")
    print("\n#### ringway io_uring ÷ HAProxy, within each run\n")
    print("| measure | ÷ HAProxy | goal |")
    print("|---|---|---|")
    for label, scenario, goal in [
        ("CPU per full handshake", "tls-rate-full-c8", "≤ 0.7"),
        ("CPU per MB over TLS", "tls-bulk-8x64k", "≤ 1"),
    ]:
        vals = []
        for r in per_run.get(scenario, []):
            a = (r.get("ringway-uring") or {}).get("cpu")
            b = (r.get("haproxy") or {}).get("cpu")
            if a is not None and b:
                vals.append(a / b)
        print(f"| {label} | {fmt(*med(vals), 2)} | {goal} |")
    print()
    for t in TLS_TARGETS:
        if t.startswith("ringway") and not any(runs.get(s, {}).get(t) for s in runs
                                               if s.startswith("tls-")):
            why = SKIPPED.get(t, "not in these runs")
            print(f"{t}: no TLS figures ({why.split(': ', 1)[-1]}).\n")


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    out = args[0] if args else "target/compare"
    runs, per_run, machine = load(out)
    if machine:
        print(f"Machine: {machine.get('nproc')} CPUs ({machine.get('cpu_model')}), "
              f"kernel {machine.get('kernel')}\n")
    if "--tls" in argv:
        tls_table(runs, per_run)
        return
    if "--goals" in argv:
        goals(runs, per_run)
        per_thread(runs, per_run)
        tls_table(runs, per_run)
    tables(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
