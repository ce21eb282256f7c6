#!/usr/bin/env python3
"""Turn the load generator's RESULT lines (bench/results/<server>-<run>.json)
into the side-by-side markdown table of bench/RESULTS.md, with ratios
Herald / peer. Used by bench/compare.sh."""
import json
import os
import platform
import subprocess
import sys
import time

SERVERS = ["herald", "nchan", "pushpin"]


def load(d, server, run):
    try:
        with open(os.path.join(d, f"{server}-{run}.json")) as f:
            line = f.read().strip().splitlines()
            return json.loads(line[-1]) if line else None
    except (OSError, ValueError):
        return None


def num(v, fmt="{:,.0f}"):
    return "–" if v is None else fmt.format(v)


def ratio(h, p, higher_is_better=True):
    if h is None or p is None or p == 0 or h == 0:
        return "–"
    r = h / p if higher_is_better else p / h
    return f"{r:.2f}x"


def lat(r, q):
    return None if r is None else (r.get("latency_ms") or {}).get(q)


def main(d):
    cpu = "unknown CPU"
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                cpu = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    print(f"## Side by side: Herald, nginx + nchan, Pushpin\n")
    print(f"Produced by `bash bench/compare.sh` on {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
          "load generator `bench/loadgen` on the same cores, loopback only. "
          "Herald runs with its defaults (durable history, fsync per publish batch). "
          "Ratios are Herald's advantage (>1 means Herald is better).\n")
    rows = []
    for run, title in [("fanout-1", "fanout A"), ("fanout-2", "fanout B")]:
        res = {s: load(d, s, run) for s in SERVERS}
        h = res["herald"] or {}
        params = (h.get("params") or {})
        label = f"{title}: {params.get('subscribers', '?')} subs x {params.get('updates', '?')} updates"
        print(f"### {label}\n")
        print("| server | deliveries/s | p50 ms | p90 ms | p99 ms | max ms | received / expected | lost | dup |")
        print("|---|---|---|---|---|---|---|---|---|")
        for s in SERVERS:
            r = res[s]
            if r is None:
                print(f"| {s} | no result | | | | | | | |")
                continue
            print(f"| {s} | {num(r.get('deliveries_per_sec'))} | {num(lat(r,'p50'),'{:.1f}')} | "
                  f"{num(lat(r,'p90'),'{:.1f}')} | {num(lat(r,'p99'),'{:.1f}')} | {num(lat(r,'max'),'{:.1f}')} | "
                  f"{num(r.get('received'))} / {num(r.get('expected'))} | {num(r.get('lost'))} | {num(r.get('duplicates'))} |")
        for s in ["nchan", "pushpin"]:
            r = res[s]
            print(f"\nHerald vs {s}: deliveries/s {ratio(h.get('deliveries_per_sec'), (r or {}).get('deliveries_per_sec'))}, "
                  f"p99 latency {ratio(lat(h,'p99'), lat(r,'p99'), higher_is_better=False)}", end="")
        print("\n")

    res = {s: load(d, s, "idle") for s in SERVERS}
    print("### idle: connections held, server memory\n")
    print("| server | connections | server RSS per connection | Herald advantage |")
    print("|---|---|---|---|")
    for s in SERVERS:
        r = res[s]
        if r is None:
            print(f"| {s} | no result | | |")
            continue
        per = r.get("rss_per_conn_bytes")
        print(f"| {s} | {num(r.get('connected'))} | {num(per)} B ({num(per and per/1024,'{:.1f}')} KiB) | "
              f"{ratio((res['herald'] or {}).get('rss_per_conn_bytes'), per, higher_is_better=False) if s != 'herald' else ''} |")
    print()

    res = {s: load(d, s, "many-topics") for s in SERVERS}
    print("### many-topics: one topic per subscriber, one update each\n")
    print("| server | subscribers | delivered once | not delivered | duplicates | wrong topic | p50 ms | p99 ms | time to deliver all (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in SERVERS:
        r = res[s]
        if r is None:
            print(f"| {s} | no result | | | | | | | |")
            continue
        failed = (r.get("publish_errors") or 0) + (r.get("connect_failed") or 0)
        print(f"| {s} | {num(r.get('connected'))} | {num(r.get('unique', r.get('received')))} | "
              f"{num((r.get('subscribers') or 0) - (r.get('unique') or 0))} ({num(failed)} publish/connect failures) | "
              f"{num(r.get('duplicates'))} | {num(r.get('wrong_topic'))} | {num(lat(r,'p50'),'{:.1f}')} | {num(lat(r,'p99'),'{:.1f}')} | "
              f"{num(r.get('delivery_time_s'),'{:.2f}')} |")
    print()

    res = {s: load(d, s, "per-user") for s in SERVERS}
    h = res["herald"] or {}
    params = h.get("params") or {}
    print(f"### per-user: {num(params.get('subscribers'))} subscribers each on its own topic, "
          f"{params.get('rounds', '?')} updates per topic, {h.get('pub_concurrency', '?')} concurrent publishers\n")
    print("| server | publishes/s | publish p99 ms | delivery p50 ms | delivery p99 ms | server CPU µs per publish | delivered / expected | lost | dup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in SERVERS:
        r = res[s]
        if r is None:
            print(f"| {s} | no result | | | | | | | |")
            continue
        print(f"| {s} | {num(r.get('publish_rate'))} | {num((r.get('publish_latency_ms') or {}).get('p99'),'{:.1f}')} | "
              f"{num(lat(r,'p50'),'{:.1f}')} | {num(lat(r,'p99'),'{:.1f}')} | {num(r.get('server_cpu_us_per_update'),'{:.1f}')} | "
              f"{num(r.get('unique'))} / {num(r.get('expected'))} | {num(r.get('lost'))} | {num(r.get('duplicates'))} |")
    print(f"\nHerald vs nchan: publishes/s {ratio(h.get('publish_rate'), (res['nchan'] or {}).get('publish_rate'))}\n")

    res = {s: load(d, s, "churn") for s in SERVERS}
    print("### churn: connect/disconnect as fast as possible while publishing\n")
    print("| server | connects | connects/s | disconnects | errors | duration s |")
    print("|---|---|---|---|---|---|")
    for s in SERVERS:
        r = res[s]
        if r is None:
            print(f"| {s} | no result | | | | |")
            continue
        print(f"| {s} | {num(r.get('connects'))} | {num(r.get('connects_per_sec'))} | {num(r.get('disconnects'))} | "
              f"{num(r.get('errors'))} | {num(r.get('duration_s'),'{:.1f}')} |")
    notes = os.path.join(d, "notes.txt")
    if os.path.exists(notes):
        print("\nNotes from the run:\n")
        for l in open(notes):
            print(f"- {l.strip()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
