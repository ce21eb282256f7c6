#!/usr/bin/env python3
"""Figures of bench/publish_scaling.sh (standard library only).

    publish_scaling_report.py annotate RESULT.json OUT.json --mode M --syncs-before A --syncs-after B
    publish_scaling_report.py line OUT.json
    publish_scaling_report.py table DIR [--svg OUT.svg]

annotate: the load generator's RESULT object plus `mode` and the fsync
figures (`history_syncs`, `fsyncs_per_sec`, `updates_per_fsync`; null when
herald_history_syncs_total was absent or the server is not Herald).
line: one summary line of a run. table: the markdown tables of every
DIR/scaling-*.json on stdout, and the plot (publishes/s against concurrent
publishers, one line per server/mode, batch runs as single points).
"""

import argparse
import glob
import json
import math
import os
import platform
import sys
import time
from xml.sax.saxutils import escape

MODES = [
    ("herald-sync", "Herald (durable: sync, the default)", "#1f77b4"),
    ("herald-relaxed", "Herald --durability relaxed", "#2ca02c"),
    ("herald-memory", "Herald --history memory", "#9467bd"),
    ("nchan", "nginx + nchan", "#d62728"),
]
LABELS = {m: l for m, l, _ in MODES}
COLOURS = {m: c for m, _, c in MODES}


def to_int(s):
    try:
        return int(float(s))
    except (TypeError, ValueError):
        return None


def annotate(args):
    with open(args.result) as f:
        r = json.loads(f.read().strip().splitlines()[-1])
    r["mode"] = args.mode
    a, b = to_int(args.syncs_before), to_int(args.syncs_after)
    syncs = b - a if a is not None and b is not None else None
    secs = r.get("publish_duration_s") or r.get("delivery_time_s")
    published = r.get("published") or 0
    r["history_syncs"] = syncs
    r["fsyncs_per_sec"] = round(syncs / secs, 1) if syncs is not None and secs else None
    r["updates_per_fsync"] = round(published / syncs, 1) if syncs else None
    with open(args.out, "w") as f:
        f.write(json.dumps(r) + "\n")


def load(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def num(v, fmt="{:,.0f}"):
    return "n/a" if v is None else fmt.format(v)


def lat(r, key, q):
    return (r.get(key) or {}).get(q)


def publishers(r):
    c = r.get("pub_concurrency")
    b = (r.get("params") or {}).get("batch_size")
    return f"{c} × batch {b:,}" if b else f"{c}"


def line(args):
    r = load(args.file)
    print(f"   {r['mode']} {r['workload']} publishers {publishers(r)}: "
          f"{num(r.get('published'))} accepted, {num(r.get('publish_rate'))} publishes/s, "
          f"delivery p50/p99 {num(lat(r, 'latency_ms', 'p50'), '{:.1f}')}/"
          f"{num(lat(r, 'latency_ms', 'p99'), '{:.1f}')} ms, "
          f"server CPU {num(r.get('server_cpu_us_per_update'), '{:.1f}')} µs/update, "
          f"fsyncs/s {num(r.get('fsyncs_per_sec'), '{:,.1f}')}, "
          f"lost {num(r.get('lost'))}, dup {num(r.get('duplicates'))}, "
          f"out of order {num(r.get('out_of_order'))}")


def runs(d):
    rs = [load(p) for p in sorted(glob.glob(os.path.join(d, "scaling-*.json")))]
    order = {m: i for i, (m, _, _) in enumerate(MODES)}

    def key(r):
        return (order.get(r.get("mode"), 99), r.get("workload") != "many-topics",
                r.get("pub_concurrency") or 0, (r.get("params") or {}).get("batch_size") or 0)
    return sorted(rs, key=key)


def table(args):
    rs = runs(args.dir)
    if not rs:
        sys.exit(f"no scaling-*.json in {args.dir}")
    cpu = "unknown CPU"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    many = [r for r in rs if r.get("workload") == "many-topics"]
    batch = [r for r in rs if r.get("workload") == "publish-batch"]
    p = (many or rs)[0].get("params") or {}
    print("## Publish scaling: concurrent publishers\n")
    print(f"Produced by `bash bench/publish_scaling.sh` on {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
          "load generator on the same cores, loopback only, a fresh server per run. "
          f"many-topics: {num(p.get('subscribers'))} subscribers each on its own topic, "
          f"{p.get('rounds', '?')} updates per topic; publishing stops after a fixed time "
          "(see the script), so slow configurations publish fewer updates (column "
          "*accepted*). publishes/s is counted from the first request sent to the last "
          "answer; delivered/s from the first request sent to the last delivery; "
          "latencies are per update, publish to delivery (publish p99: per request). "
          "fsyncs/s from `herald_history_syncs_total` (n/a: the counter is absent).\n")

    concs = sorted({r.get("pub_concurrency") for r in many if r.get("pub_concurrency")})
    print("### publishes/s by concurrent publishers\n")
    print("| server / mode | " + " | ".join(f"{c}" for c in concs) + " |")
    print("|---|" + "---|" * len(concs))
    for mode, label, _ in MODES:
        cells = {r.get("pub_concurrency"): r.get("publish_rate") for r in many if r.get("mode") == mode}
        if cells:
            print(f"| {label} | " + " | ".join(num(cells.get(c)) for c in concs) + " |")
    for r in batch:
        print(f"| {LABELS.get(r['mode'], r['mode'])}, batch endpoint, "
              f"{num((r.get('params') or {}).get('batch_size'))} per request | "
              f"{num(r.get('publish_rate'))} ({r.get('pub_concurrency', 1)} in flight) |" + " |" * (len(concs) - 1))
    print()

    print("### every run\n")
    print("| server / mode | workload | publishers | accepted | publishes/s | publish p99 ms | "
          "delivered/s | delivery p50 ms | delivery p99 ms | server CPU µs/update | "
          "fsyncs/s | updates/fsync | delivered / expected | lost | dup | out of order |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rs:
        print(f"| {LABELS.get(r['mode'], r['mode'])} | {r.get('workload')} | {publishers(r)} | "
              f"{num(r.get('published'))} | {num(r.get('publish_rate'))} | "
              f"{num(lat(r, 'publish_latency_ms', 'p99'), '{:.1f}')} | {num(r.get('deliveries_per_sec'))} | "
              f"{num(lat(r, 'latency_ms', 'p50'), '{:.1f}')} | {num(lat(r, 'latency_ms', 'p99'), '{:.1f}')} | "
              f"{num(r.get('server_cpu_us_per_update'), '{:.1f}')} | {num(r.get('fsyncs_per_sec'), '{:,.1f}')} | "
              f"{num(r.get('updates_per_fsync'), '{:,.1f}')} | {num(r.get('unique'))} / {num(r.get('expected'))} | "
              f"{num(r.get('lost'))} | {num(r.get('duplicates'))} | {num(r.get('out_of_order'))} |")
    failures = [r for r in rs if r.get("first_failure")]
    if failures:
        print("\nFirst failures:\n")
        for r in failures:
            print(f"- {r['mode']} {r['workload']} {publishers(r)}: {r['first_failure']}")
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg(many, batch))


def log_ticks(lo, hi):
    """1, 2, 5 × powers of ten covering [lo, hi]."""
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    return ticks


def short(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def svg(many, batch):
    """Publishes/s (log) against concurrent publishers (log2), one line per mode."""
    w, h = 900, 520
    ml, mr, mt, mb = 80, 290, 60, 60
    pw, ph = w - ml - mr, h - mt - mb
    pts = [(r.get("pub_concurrency"), r.get("publish_rate")) for r in many + batch]
    pts = [(c, v) for c, v in pts if c and v]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{ml + pw / 2}" y="24" font-size="15" text-anchor="middle">'
           'Publish throughput against concurrent publishers</text>']
    if many:
        p = many[0].get("params") or {}
        sub = (f"many-topics: {p.get('subscribers', 0):,} subscribers, a topic each, "
               f"{p.get('rounds', '?')} updates per topic")
        if batch:
            b = batch[0].get("params") or {}
            sub += (f"; batch: {b.get('updates', 0):,} updates, "
                    f"{batch[0].get('pub_concurrency', 1)} requests in flight")
        out.append(f'<text x="{ml + pw / 2}" y="42" text-anchor="middle" fill="#555">{escape(sub)}</text>')
    if not pts:
        out.append(f'<text x="{ml + 20}" y="{mt + 40}">no results</text></svg>\n')
        return "\n".join(out)
    cs = sorted({c for c, _ in pts})
    cmin, cmax = min(cs), max(max(cs), min(cs) * 2)
    ylo = 10 ** math.floor(math.log10(min(v for _, v in pts)))
    yhi = 10 ** math.ceil(math.log10(max(v for _, v in pts)))
    yhi = max(yhi, ylo * 10)

    def xs(c):
        return ml + (math.log2(c) - math.log2(cmin)) / (math.log2(cmax) - math.log2(cmin)) * pw

    def ys(v):
        return mt + ph - (math.log10(v) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo)) * ph

    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for v in log_ticks(ylo, yhi):
        y = ys(v)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{short(v)}</text>')
    for c in cs:
        x = xs(c)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">{c}</text>')
    out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 38}" text-anchor="middle">'
               'concurrent publishers (keep-alive connections, log scale)</text>')
    out.append(f'<text x="18" y="{mt + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {mt + ph / 2})">publishes/s (log scale)</text>')
    legend = []
    for mode, label, colour in MODES:
        line_pts = sorted((r["pub_concurrency"], r["publish_rate"]) for r in many
                          if r.get("mode") == mode and r.get("pub_concurrency") and r.get("publish_rate"))
        if not line_pts:
            continue
        d = " ".join(f"{'M' if i == 0 else 'L'}{xs(c):.1f},{ys(v):.1f}" for i, (c, v) in enumerate(line_pts))
        out.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for c, v in line_pts:
            out.append(f'<circle cx="{xs(c):.1f}" cy="{ys(v):.1f}" r="3.5" fill="{colour}"/>')
        legend.append(("line", colour, f"{label}, many-topics"))
    for r in batch:
        c, v = r.get("pub_concurrency"), r.get("publish_rate")
        if not (c and v):
            continue
        colour = COLOURS.get(r.get("mode"), "#333")
        x, y = xs(c), ys(v)
        out.append(f'<path d="M{x:.1f},{y - 6:.1f} L{x + 6:.1f},{y:.1f} L{x:.1f},{y + 6:.1f} '
                   f'L{x - 6:.1f},{y:.1f} Z" fill="white" stroke="{colour}" stroke-width="2"/>')
        size = (r.get("params") or {}).get("batch_size")
        out.append(f'<text x="{x + 9:.1f}" y="{y + 4:.1f}" fill="{colour}">batch {short(size)}</text>')
        legend.append(("diamond", colour,
                       f"{LABELS.get(r.get('mode'), r.get('mode'))}, batch of {size:,}"))
    lx, ly = ml + pw + 20, mt + 10
    for i, (kind, colour, text) in enumerate(legend):
        y = ly + i * 36
        if kind == "line":
            out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
            out.append(f'<circle cx="{lx + 12}" cy="{y}" r="3.5" fill="{colour}"/>')
        else:
            out.append(f'<path d="M{lx + 12},{y - 6} L{lx + 18},{y} L{lx + 12},{y + 6} L{lx + 6},{y} Z" '
                       f'fill="white" stroke="{colour}" stroke-width="2"/>')
        words, rows = text.split(" "), [""]
        for word in words:
            if len(rows[-1]) + len(word) > 32:
                rows.append("")
            rows[-1] = (rows[-1] + " " + word).strip()
        for k, row in enumerate(rows[:2]):
            out.append(f'<text x="{lx + 32}" y="{y + 4 + k * 14}">{escape(row)}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("annotate")
    a.add_argument("result")
    a.add_argument("out")
    a.add_argument("--mode", required=True)
    a.add_argument("--syncs-before", default="")
    a.add_argument("--syncs-after", default="")
    l = sub.add_parser("line")
    l.add_argument("file")
    t = sub.add_parser("table")
    t.add_argument("dir")
    t.add_argument("--svg")
    args = ap.parse_args()
    {"annotate": annotate, "line": line, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
