#!/usr/bin/env python3
"""Batch publish throughput: prints figures, asserts nothing.

    python3 bench/batch_publish.py [path/to/herald] [total]

Starts a fresh `herald serve` (durable history, the default), then
publishes TOTAL updates (default 100,000) to 10,000 per-user topics through
`POST /.well-known/mercure/batch`, in batches of 1,000 and then of 10,000,
from one client sending its requests one after another. No subscribers: this
is the publish side only (JSON parse, validation, one durable group commit
per request). Loopback only; it stops what it starts.
"""
import http.client
import json
import subprocess
import sys
import tempfile
import time

HERALD = sys.argv[1] if len(sys.argv) > 1 else "target/release/herald"
TOTAL = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000


def main():
    token = subprocess.run([HERALD, "token", "--jwt-key", "k", "--publish", "*"],
                           capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [HERALD, "serve", "--listen", "127.0.0.1:0", "--jwt-key", "k", "--data-dir", data,
             "--history-size", str(4 * TOTAL)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(server.stdout.readline().rsplit(":", 1)[1])
            for size in (1000, 10000):
                bodies = []
                for b in range(TOTAL // size):
                    lines = [json.dumps({
                        "topic": f"https://ex.net/users/{(b * size + i) % 10000}",
                        "data": json.dumps({"n": b * size + i, "status": "UNREAD"}),
                        "private": True,
                    }) for i in range(size)]
                    bodies.append("\n".join(lines).encode())
                conn = http.client.HTTPConnection("127.0.0.1", port)
                started = time.time()
                for body in bodies:
                    conn.request("POST", "/.well-known/mercure/batch", body=body, headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/x-ndjson"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        sys.exit(f"batch refused: {resp.status}")
                took = time.time() - started
                print(f"batches of {size:>6}: {TOTAL} durable updates in {took:.2f} s = "
                      f"{TOTAL / took:,.0f} updates/s")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
