#!/usr/bin/env python3
"""Fill a running Herald's history past its cap, so a benchmark that follows
measures the steady state (history full, every commit trimming) rather than
a fresh server.

    python3 bench/fill_history.py URL TOKEN COUNT [TOPICS]

Publishes COUNT updates (private, ~60-byte payloads like the per-user
workload's) to TOPICS per-user topics (default 10,000) through the batch
endpoint, 1,000 per request, from one keep-alive connection. Prints how long
it took. Exits non-zero on any refusal. Loopback only.
"""
import http.client
import json
import sys
import time
import urllib.parse

BATCH = 1000


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    url = urllib.parse.urlparse(sys.argv[1])
    token, count = sys.argv[2], int(sys.argv[3])
    topics = int(sys.argv[4]) if len(sys.argv) > 4 else 10_000
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=120)
    started = time.time()
    sent = 0
    while sent < count:
        size = min(BATCH, count - sent)
        body = "\n".join(json.dumps({
            "topic": f"https://example.com/fill/{(sent + i) % topics}",
            "data": json.dumps({"n": sent + i, "status": "UNREAD"}),
            "private": True,
        }) for i in range(size)).encode()
        conn.request("POST", "/.well-known/mercure/batch", body=body, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            sys.exit(f"fill: batch refused: {resp.status} {text[:200]!r}")
        sent += size
    took = time.time() - started
    print(f"fill: {count} updates in {took:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
