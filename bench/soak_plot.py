#!/usr/bin/env python3
"""Soak analysis: herald RSS and open fds over time (CSV from bench/soak.sh).

    soak_plot.py samples.csv out.svg [--tolerance-pct 10] [--tolerance-mb 20] [--title T]

Prints a summary and writes an SVG (standard library only). Exit status 1
when RSS grew after the warm-up by more than the tolerance, 2 when there
are too few samples to judge.

Rule: warm-up = the first 20% of the run. baseline = median RSS of the
samples in [20%, 40%) of the run; final = median of the samples in
[80%, 100%]. Growth = final - baseline; it fails when growth >
max(tolerance-pct of baseline, tolerance-mb MiB).
"""

import argparse
import csv
import statistics
import sys
from xml.sax.saxutils import escape

WARMUP = 0.20
BASE = (0.20, 0.40)
FINAL = (0.80, 1.00)


def load(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            def num(k):
                v = (r.get(k) or "").strip()
                try:
                    return float(v)
                except ValueError:
                    return None
            rows.append({k: num(k) for k in r})
    return [r for r in rows if r.get("t_s") is not None and r.get("rss_kb") is not None]


def window(rows, span, lo, hi):
    return [r for r in rows if lo * span <= r["t_s"] < hi * span or (hi >= 1.0 and r["t_s"] >= lo * span)]


def mib(kb):
    return kb / 1024.0


def nice_step(span, target=5):
    raw = span / target if span > 0 else 1
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def panel(x0, y0, w, h, t_max, series, y_label, shade, hlines, legend):
    """series: [(points [(t, v)], colour, label)]; shade: [(t0, t1, colour, label)]"""
    vals = [v for pts, _, _ in series for _, v in pts] + [v for v, _, _ in hlines]
    if not vals:
        return ""
    lo, hi = 0.0, max(vals) * 1.1 or 1.0
    def X(t):
        return x0 + (t / t_max) * w if t_max > 0 else x0
    def Y(v):
        return y0 + h - (v - lo) / (hi - lo) * h
    out = []
    for t0, t1, col, _ in shade:
        out.append(f'<rect x="{X(t0):.1f}" y="{y0}" width="{max(X(t1) - X(t0), 0):.1f}" height="{h}" fill="{col}"/>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>')
    step = nice_step(hi - lo)
    v = 0.0
    while v <= hi:
        y = Y(v)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
        v += step
    tstep = nice_step(t_max, 10)
    t = 0.0
    while t <= t_max + 1e-9:
        x = X(t)
        out.append(f'<line x1="{x:.1f}" y1="{y0 + h}" x2="{x:.1f}" y2="{y0 + h + 4}" stroke="#444"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" font-size="11" text-anchor="middle">{t:g}</text>')
        t += tstep
    out.append(f'<text x="{x0 - 45}" y="{y0 + h / 2}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 {x0 - 45} {y0 + h / 2})">{escape(y_label)}</text>')
    for v, col, _ in hlines:
        out.append(f'<line x1="{x0}" y1="{Y(v):.1f}" x2="{x0 + w}" y2="{Y(v):.1f}" stroke="{col}" stroke-dasharray="6 4"/>')
    for pts, col, _ in series:
        if pts:
            d = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="1.5"/>')
    items = [(col, lab) for _, col, lab in series] + [(col, lab) for _, col, lab in hlines] + \
            [(col, lab) for _, _, col, lab in shade if lab]
    lx = x0 + 8
    for col, lab in items if legend else []:
        out.append(f'<rect x="{lx}" y="{y0 + 8}" width="12" height="10" fill="{col}" stroke="#888"/>')
        out.append(f'<text x="{lx + 16}" y="{y0 + 17}" font-size="11">{escape(lab)}</text>')
        lx += 24 + 6.5 * len(lab)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("svg")
    ap.add_argument("--tolerance-pct", type=float, default=10.0)
    ap.add_argument("--tolerance-mb", type=float, default=20.0)
    ap.add_argument("--title", default="herald soak")
    a = ap.parse_args()

    rows = load(a.csv)
    if len(rows) < 10:
        print(f"too few samples ({len(rows)}) to judge")
        return 2
    span = rows[-1]["t_s"]
    base = window(rows, span, *BASE)
    final = [r for r in rows if r["t_s"] >= FINAL[0] * span]
    if len(base) < 3 or len(final) < 3:
        print("too few samples in the comparison windows")
        return 2
    warm = [r for r in rows if r["t_s"] < WARMUP * span]
    warm_end = warm[-1] if warm else rows[0]
    b = statistics.median(r["rss_kb"] for r in base)
    f = statistics.median(r["rss_kb"] for r in final)
    tol_kb = max(a.tolerance_pct / 100.0 * b, a.tolerance_mb * 1024.0)
    growth = f - b
    peak = max(rows, key=lambda r: r["rss_kb"])
    fds = [r["fds"] for r in rows if r["fds"] is not None]
    fds_after = [r["fds"] for r in rows if r["t_s"] >= WARMUP * span and r["fds"] is not None]
    ok = growth <= tol_kb

    print(f"samples               {len(rows)} over {span:.0f} s")
    print(f"warm-up end           {warm_end['t_s']:.0f} s (first {WARMUP:.0%} of the run)")
    print(f"RSS at warm-up end    {mib(warm_end['rss_kb']):.1f} MiB")
    print(f"RSS baseline          {mib(b):.1f} MiB (median of {len(base)} samples, {BASE[0]:.0%}-{BASE[1]:.0%})")
    print(f"RSS final             {mib(f):.1f} MiB (median of {len(final)} samples, {FINAL[0]:.0%}-{FINAL[1]:.0%})")
    print(f"RSS max               {mib(peak['rss_kb']):.1f} MiB at {peak['t_s']:.0f} s")
    print(f"RSS at end            {mib(rows[-1]['rss_kb']):.1f} MiB (t={rows[-1]['t_s']:.0f} s)")
    print(f"RSS growth            {growth / 1024:+.1f} MiB, tolerance {tol_kb / 1024:.1f} MiB "
          f"(max of {a.tolerance_pct:g}% and {a.tolerance_mb:g} MiB): {'ok' if ok else 'TOO MUCH'}")
    if fds:
        print(f"fds                   warm-up end {warm_end['fds']:.0f}, after warm-up min {min(fds_after):.0f} / "
              f"max {max(fds_after):.0f}, max overall {max(fds):.0f}, last sample {fds[-1]:.0f}")

    # ---- SVG ----
    W, H = 960, 620
    x0, w = 80, W - 120
    t_max = max(span, 1)
    tol_line = mib(b + tol_kb)
    rss_pts = [(r["t_s"], mib(r["rss_kb"])) for r in rows]
    shade = [(0, WARMUP * span, "#eeeeee", "warm-up"),
             (BASE[0] * span, BASE[1] * span, "#e3f0ff", "baseline window"),
             (FINAL[0] * span, span, "#fff0dd", "final window")]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'font-family="sans-serif"><rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{W / 2}" y="22" font-size="14" text-anchor="middle">{escape(a.title)}</text>',
             f'<text x="{W / 2}" y="40" font-size="12" text-anchor="middle">'
             f'RSS baseline {mib(b):.1f} MiB, final {mib(f):.1f} MiB, growth {growth / 1024:+.1f} MiB '
             f'(limit {tol_kb / 1024:.1f}): {"PASS" if ok else "FAIL"}</text>']
    parts.append(panel(x0, 60, w, 230, t_max, [(rss_pts, "#c0392b", "herald RSS (MiB)")], "RSS (MiB)",
                       shade, [(mib(b), "#2c7fb8", "baseline median"), (tol_line, "#888", "fail above")], True))
    fd_series = [([(r["t_s"], r["fds"]) for r in rows if r["fds"] is not None], "#27ae60", "open fds")]
    subs = [(r["t_s"], r["subscribers"]) for r in rows if r.get("subscribers") is not None]
    if subs:
        fd_series.append((subs, "#8e44ad", "herald_subscribers"))
    parts.append(panel(x0, 340, w, 230, t_max, fd_series, "count", shade[:1], [], True))
    parts.append(f'<text x="{x0 + w / 2}" y="{H - 14}" font-size="12" text-anchor="middle">time (s)</text>')
    parts.append("</svg>")
    with open(a.svg, "w") as fh:
        fh.write("\n".join(parts) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
