#!/usr/bin/env python3
"""Table (medians) and SVG plot of bench/history_fill.sh's runs.

    python3 bench/history_fill_report.py RUNS.jsonl OUT.svg
"""
import json
import statistics
import sys

STATES = ["empty", "half", "full", "full-1M"]
LABELS = {"empty": "empty (cap 100k)", "half": "50% (cap 100k)",
          "full": "100%, trimming (cap 100k)", "full-1M": "100%, trimming (cap 1M)"}
COLORS = {"old": "#999999", "new": "#1f6fb4"}


def main():
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    builds = [b for b in ("old", "new") if any(r["build"] == b for r in rows)]
    med = {}
    for b in builds:
        for s in STATES:
            runs = [r for r in rows if r["build"] == b and r["state"] == s
                    and r["publish_rate"] and r["cpu_us_per_publish"]]
            if runs:
                med[(b, s)] = (statistics.median(r["publish_rate"] for r in runs),
                               statistics.median(r["cpu_us_per_publish"] for r in runs),
                               len(runs))
    head = "| history before the run | " + " | ".join(
        f"{b}: publishes/s | {b}: server CPU µs/publish" for b in builds) + " |"
    print(head)
    print("|---" * (1 + 2 * len(builds)) + "|")
    for s in STATES:
        cells = []
        for b in builds:
            if (b, s) in med:
                rate, cpu, n = med[(b, s)]
                cells += [f"{rate:,.0f}", f"{cpu:.1f}"]
            else:
                cells += ["-", "-"]
        print(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
    with open(sys.argv[2], "w") as f:
        f.write(svg(med, builds))


def svg(med, builds):
    w, h, ml, mr, mt, mb = 640, 360, 60, 20, 40, 70
    top = max([v[1] for v in med.values()] + [1]) * 1.15
    pw, ph = w - ml - mr, h - mt - mb
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{ml}" y="22" font-size="14">Server CPU per publish against history fill '
           '(per-user, 32 publishers, durable)</text>']
    for i in range(6):
        v = top * i / 5
        y = mt + ph - ph * i / 5
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{w - mr}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    out.append(f'<text x="14" y="{mt + ph / 2}" transform="rotate(-90 14 {mt + ph / 2})" '
               'text-anchor="middle">µs of server CPU per publish</text>')
    group = pw / len(STATES)
    bar = group / (len(builds) + 1)
    for i, s in enumerate(STATES):
        x0 = ml + group * i + bar / 2
        for j, b in enumerate(builds):
            if (b, s) not in med:
                continue
            v = med[(b, s)][1]
            bh = ph * v / top
            x = x0 + bar * j
            out.append(f'<rect x="{x:.1f}" y="{mt + ph - bh:.1f}" width="{bar * 0.9:.1f}" '
                       f'height="{bh:.1f}" fill="{COLORS[b]}"/>')
            out.append(f'<text x="{x + bar * 0.45:.1f}" y="{mt + ph - bh - 4:.1f}" '
                       f'text-anchor="middle" font-size="11">{v:.0f}</text>')
        out.append(f'<text x="{ml + group * (i + 0.5):.1f}" y="{mt + ph + 18}" '
                   f'text-anchor="middle" font-size="11">{LABELS[s].split(" (")[0]}</text>')
        out.append(f'<text x="{ml + group * (i + 0.5):.1f}" y="{mt + ph + 32}" '
                   f'text-anchor="middle" font-size="11">({LABELS[s].split(" (")[1]}</text>')
    for j, b in enumerate(builds):
        x = ml + 10 + 150 * j
        out.append(f'<rect x="{x}" y="{h - 18}" width="12" height="12" fill="{COLORS[b]}"/>')
        out.append(f'<text x="{x + 18}" y="{h - 8}">{"before (id table on disk)" if b == "old" else "after (ids in memory)"}</text>')
    out.append("</svg>\n")
    return "\n".join(out)


if __name__ == "__main__":
    main()
