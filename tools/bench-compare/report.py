#!/usr/bin/python3
"""bench-compare's numbers: one result line per run, then the table and the plots.

  report.py pgbench --inflight N --secs S --stdout FILE --logs PREFIX --written K
  report.py tally   --inflight N --secs S --json FILE --preload yes|no
  report.py etcd    --inflight N --secs S --json FILE
  report.py cpusnap  --root PID [--extra PID,...]
  report.py annotate --results results.jsonl --load-before L [--cpu-before S --cpu-after S]
  report.py table   --results results.jsonl --flush flushrate.json
                    [--flush-direct flushrate-direct-dsync.json] --out DIR

The first three print one JSON line of the common shape (system, inflight, secs,
ops, ops_per_s, rejected, errors, p50_ms, p99_ms, p999_ms, max_ms, note) read from
what each load generator left; `run` appends it to results.jsonl, and `annotate` adds
to its last line the load average seen before the run and, from two `cpusnap`
snapshots taken around the run, how much CPU the benchmark's own processes used and how
much everything else on the machine did. `table` writes
DIR/table.md and, with gnuplot, DIR/throughput.png and DIR/p99.png.

An op counts whether it was applied or rejected (a redemption the balance could not
cover): every system answers both, and each load generator counts both.
Standard library only (Debian's /usr/bin/python3).
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

SYSTEMS = [("tally", "Tally"), ("pg", "PostgreSQL"), ("etcd", "etcd")]


def pct(sorted_values, p):
    """The p-th percentile of a sorted list, nearest rank (as tally-bench reports)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, int(p / 100.0 * len(sorted_values)))
    return sorted_values[i]


def line(system, a, ops, ops_per_s, rejected, errors, lat, note=""):
    return {
        "system": system, "inflight": a.inflight, "secs": a.secs, "ops": ops,
        "ops_per_s": round(ops_per_s, 1), "rejected": rejected, "errors": errors,
        "p50_ms": round(lat["p50"], 3), "p99_ms": round(lat["p99"], 3),
        "p999_ms": round(lat["p999"], 3), "max_ms": round(lat["max"], 3), "note": note,
    }


def from_pgbench(a):
    """pgbench -l writes one file per thread (PREFIX.PID, PREFIX.PID.1, ...) with one
    line per transaction: client, number, latency in µs, script, epoch s, µs. Its own
    output gives the rate (tps, without connection time) and failed transactions."""
    lat_us = []
    for path in glob.glob(a.logs + ".*"):
        with open(path) as f:
            for row in f:
                fields = row.split()
                if len(fields) >= 6 and fields[2].isdigit():
                    lat_us.append(int(fields[2]))
    lat_us.sort()
    out = open(a.stdout).read()
    tps = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", out, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", out, re.M)
    if tps is None:
        sys.exit("report.py: no tps line in %s" % a.stdout)
    ms = [v / 1000.0 for v in lat_us]
    lat = {"p50": pct(ms, 50), "p99": pct(ms, 99), "p999": pct(ms, 99.9),
           "max": ms[-1] if ms else 0.0}
    # Every logged transaction is an op; the ones that wrote no ledger row were rejected.
    rejected = max(0, len(lat_us) - a.written)
    return line("pg", a, len(lat_us), float(tps.group(1)), rejected,
                int(failed.group(1)) if failed else 0, lat)


def from_tally(a):
    r = json.load(open(a.json))
    note = "preload 10000" if a.preload == "yes" else "members start at 0 points (no --preload)"
    return line("tally", a, r["commands"], r["commands_per_s"], r["rejected"], r["errors"],
                r["lat_ms"], note)


def from_etcd(a):
    r = json.load(open(a.json))
    return line("etcd", a, r["ops"], r["ops_per_s"], r["rejected"], r["errors"], r["lat_ms"],
                "%d compare retries" % r["retries"])


def cpusnap(a):
    """One snapshot, as JSON: seconds since boot, the machine's busy CPU ticks (all of
    /proc/stat's cpu line but idle and iowait); the ticks used by our processes: the
    run script (root), everything below it, and the extra PIDs (Tally's nodes, whose
    parent tally-cluster has exited), each counting its own time and its reaped
    children's (utime, stime, cutime, cstime), so that a process ending between two
    snapshots still counts; and the kernel's own: interrupts and softirqs (no process is
    charged for them) plus its threads (kthreadd's children: kworkers, ksoftirqd). The
    kernel's share is mostly the benchmark's disk and network work, charged to nobody:
    writes through O_DIRECT (Tally's raft log) complete in kworkers and softirqs, while
    a buffered write + fdatasync (PostgreSQL, etcd) does more of it in its own syscall."""
    parent, ticks = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        pid = int(d)
        parent[pid] = int(rest[1])  # rest[1] is the ppid (kthreadd is 2, its children ours too)
        ticks[pid] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    children = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    ours, unvisited = set(), [a.root] + [int(p) for p in a.extra.split(",") if p.strip()]
    while unvisited:
        pid = unvisited.pop()
        if pid in ours or pid not in ticks:
            continue
        ours.add(pid)
        unvisited.extend(children.get(pid, []))
    kthreads = [p for p, pp in parent.items() if pp == 2 or p == 2]
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # less idle and iowait (guest is within user)
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    # Kernel threads come and go (kworkers), so each one's ticks are kept: between two
    # snapshots only the threads alive at the second count, by how much they grew.
    print(json.dumps({"uptime": up, "busy": busy, "ours": sum(ticks[p] for p in ours),
                      "irq": cpu[5] + cpu[6], "kthreads": {p: ticks[p] for p in kthreads}}))


def annotate(a):
    with open(a.results) as f:
        rows = [l for l in f if l.strip()]
    last = json.loads(rows[-1])
    last["load_before"] = a.load_before
    if a.cpu_before and a.cpu_after:
        b, e = json.loads(a.cpu_before), json.loads(a.cpu_after)
        hz, cores = os.sysconf("SC_CLK_TCK"), os.cpu_count()
        capacity = (e["uptime"] - b["uptime"]) * hz * cores  # ticks the cores had
        if capacity > 0:
            ours = e["ours"] - b["ours"]
            kernel = (e["irq"] - b["irq"]) + sum(
                t - b["kthreads"].get(p, 0) for p, t in e["kthreads"].items())
            other = max(0, (e["busy"] - b["busy"]) - ours - kernel)
            # In % of all cores: our processes, the kernel's work charged to no process
            # (mostly ours: disk and network), and every other process on the machine.
            last["cpu_ours_pct"] = round(100.0 * ours / capacity, 1)
            last["cpu_kernel_pct"] = round(100.0 * kernel / capacity, 1)
            last["cpu_other_pct"] = round(100.0 * other / capacity, 1)
    rows[-1] = json.dumps(last) + "\n"
    with open(a.results, "w") as f:
        f.writelines(rows)


def fmt_rate(v):
    return "—" if v is None else "{:,.0f}".format(v)


def fmt_ms(v):
    if v is None:
        return "—"
    return "%.2f" % v if v < 10 else "%.1f" % v if v < 100 else "%.0f" % v


def ratio(a, b):
    return "—" if a is None or not b else "%.2f" % (a / b)


def table(a):
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    flush = json.load(open(a.flush)) if a.flush and os.path.exists(a.flush) else None
    direct = (json.load(open(a.flush_direct))
              if a.flush_direct and os.path.exists(a.flush_direct) else None)
    by = {(r["system"], r["inflight"]): r for r in rows}
    counts = sorted({r["inflight"] for r in rows})
    present = [(s, name) for s, name in SYSTEMS if any(r["system"] == s for r in rows)]

    def get(system, n, key):
        r = by.get((system, n))
        return None if r is None else r[key]

    head = ["in flight"]
    for _, name in present:
        head += ["%s ops/s" % name, "%s p50 / p99 ms" % name]
    for s, name in present:
        if s != "tally" and any(x == "tally" for x, _ in present):
            head.append("Tally / %s" % name)
    if flush:
        head.append("flush bound")
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for n in counts:
        cells = [str(n)]
        for s, _ in present:
            cells.append(fmt_rate(get(s, n, "ops_per_s")))
            p50, p99 = get(s, n, "p50_ms"), get(s, n, "p99_ms")
            cells.append("—" if p50 is None else "%s / %s" % (fmt_ms(p50), fmt_ms(p99)))
        for s, _ in present:
            if s != "tally" and any(x == "tally" for x, _ in present):
                cells.append(ratio(get("tally", n, "ops_per_s"), get(s, n, "ops_per_s")))
        if flush:
            cells.append(fmt_rate(flush["rounds_per_s"] * n))
        out.append("| " + " | ".join(cells) + " |")

    notes = []
    secs = sorted({r["secs"] for r in rows})
    notes.append("%s s per run; ops/s counts applied and rejected ops alike." %
                 "/".join(str(s) for s in secs))
    if flush:
        notes.append("Flush bound: %d concurrent 4 KiB write + fdatasync loops on the work dir's "
                     "disk did %.0f rounds/s each (round p50 %.2f ms, p99 %.2f ms); with one op "
                     "per round per in-flight request the bound is that times the in-flight count."
                     % (flush["loops"], flush["rounds_per_s"], flush["round_ms"]["p50"],
                        flush["round_ms"]["p99"]))
    if direct:
        notes.append("The same loops writing through O_DIRECT|O_DSYNC (as raft's libuv backend "
                     "writes Tally's log) did %.0f rounds/s each (round p50 %.2f ms, p99 %.2f ms)."
                     % (direct["rounds_per_s"], direct["round_ms"]["p50"],
                        direct["round_ms"]["p99"]))
    # How much of the two cores other work took during each system's runs: the load
    # average is no guide (it counts tasks waiting on the disk), the CPU split is.
    spans = []
    for s, name in present:
        other = [r["cpu_other_pct"] for r in rows if r["system"] == s and "cpu_other_pct" in r]
        if other:
            spans.append("%s %.0f–%.0f %%" % (name, min(other), max(other)))
    if spans:
        worst = max(r.get("cpu_other_pct", 0) for r in rows)
        notes.append("CPU taken by other processes during the runs, in %% of all cores "
                     "(not the benchmark's, not the kernel's interrupts and threads): %s.%s" % (
                         ", ".join(spans),
                         " Other work was running: the systems it overlapped lost CPU to it."
                         if worst > 15 else ""))
    for r in rows:
        if r.get("errors"):
            notes.append("%s at %d in flight: %d errors." % (r["system"], r["inflight"], r["errors"]))
    for s, name in present:
        ns = sorted({r["note"] for r in rows if r["system"] == s and r.get("note")})
        if s == "tally" and ns:
            notes.append("Tally: " + "; ".join(ns) + ".")
        rej = sum(r["rejected"] for r in rows if r["system"] == s)
        tot = sum(r["ops"] for r in rows if r["system"] == s)
        if tot:
            notes.append("%s: %.2f %% of ops rejected." % (name, 100.0 * rej / tot))
    text = "\n".join(out) + "\n\n" + "\n".join("- " + n for n in notes) + "\n"
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    plots(a.out, present, counts, get, flush)


def plots(out, present, counts, get, flush):
    """Data files and one gnuplot script for the two PNGs (a missing gnuplot is a
    warning: the table is the result, the plots show it). The script names its files
    relative to DIR and gnuplot runs there, so DIR can be moved or committed."""
    data = "plot.dat"
    with open(os.path.join(out, data), "w") as f:
        # One block per system (separated by two blank lines: gnuplot's `index`).
        for s, name in present:
            f.write("# %s: inflight ops_per_s p99_ms\n" % name)
            for n in counts:
                v, p99 = get(s, n, "ops_per_s"), get(s, n, "p99_ms")
                if v is not None:
                    f.write("%d %s %s\n" % (n, v, p99))
            f.write("\n\n")
        if flush:
            f.write("# flush bound: inflight rounds_per_s*inflight\n")
            for n in counts:
                f.write("%d %s 0\n" % (n, flush["rounds_per_s"] * n))
    style = "set terminal pngcairo size 900,560 font 'sans,11'\n" \
            "set logscale x 2\nset grid\nset key top left\nset xlabel 'requests in flight'\n" \
            "set xtics (%s)\nset xrange [%g:%g]\n" % (
                ", ".join("'%d' %d" % (n, n) for n in counts), counts[0] / 1.4, counts[-1] * 1.4)
    thr = ["'%s' index %d using 1:2 with linespoints lw 2 title '%s'" % (data, i, name)
           for i, (_, name) in enumerate(present)]
    if flush:
        thr.append("'%s' index %d using 1:2 with lines dt 2 lc rgb 'gray40' "
                   "title 'flush bound (rounds/s x in flight)'" % (data, len(present)))
    p99 = ["'%s' index %d using 1:3 with linespoints lw 2 title '%s'" % (data, i, name)
           for i, (_, name) in enumerate(present)]
    script = style + (
        "set output '%s'\nset title 'points ops/s (durable on 2 of 3)'\n"
        "set ylabel 'ops/s'\nset logscale y\nset format y '%%.0f'\nplot %s\n"
        "set format y '%%g'\n"
        "set output '%s'\nset title 'p99 latency of a points op'\n"
        "set ylabel 'p99 latency (ms)'\nset logscale y\nplot %s\n" % (
            "throughput.png", ", ".join(thr), "p99.png", ", ".join(p99)))
    with open(os.path.join(out, "plot.gp"), "w") as f:
        f.write(script)
    try:
        subprocess.run(["gnuplot", "plot.gp"], cwd=out, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print("report.py: gnuplot failed (%s); table.md is written" % e, file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("pgbench", "tally", "etcd"):
        s = sub.add_parser(name)
        s.add_argument("--inflight", type=int, required=True)
        s.add_argument("--secs", type=int, required=True)
        if name == "pgbench":
            s.add_argument("--stdout", required=True)
            s.add_argument("--logs", required=True)
            s.add_argument("--written", type=int, required=True)
        else:
            s.add_argument("--json", required=True)
        if name == "tally":
            s.add_argument("--preload", choices=["yes", "no"], required=True)
    c = sub.add_parser("cpusnap")
    c.add_argument("--root", type=int, required=True)
    c.add_argument("--extra", default="")
    n = sub.add_parser("annotate")
    n.add_argument("--results", required=True)
    n.add_argument("--load-before", type=float, required=True)
    n.add_argument("--cpu-before")
    n.add_argument("--cpu-after")
    t = sub.add_parser("table")
    t.add_argument("--results", required=True)
    t.add_argument("--flush")
    t.add_argument("--flush-direct")
    t.add_argument("--out", required=True)
    a = p.parse_args()
    if a.cmd in ("table", "annotate", "cpusnap"):
        {"table": table, "annotate": annotate, "cpusnap": cpusnap}[a.cmd](a)
        return
    r = {"pgbench": from_pgbench, "tally": from_tally, "etcd": from_etcd}[a.cmd](a)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
