#!/usr/bin/env python3
"""Publish throughput while anonymous clients hold many distinct patterns:
prints figures, asserts nothing.

    python3 bench/pattern_publish.py [path/to/herald] [connections] [patterns] [seconds]

Starts a fresh `herald serve` (in-memory history, so the figure is the
matching cost, not the disk), publishes from 8 keep-alive HTTP clients for
SECONDS with no pattern subscribers, then opens CONNECTIONS anonymous
subscriptions with PATTERNS distinct `match_urlpattern` selectors each
(none of them matching what is published, the attack of the review) and
publishes again. Python clients: the absolute publishes/s is bounded by
them; the ratio is the point. Loopback only; it stops what it starts.
"""
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERALD = sys.argv[1] if len(sys.argv) > 1 else "target/release/herald"
CONNS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
PATTERNS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
SECONDS = float(sys.argv[4]) if len(sys.argv) > 4 else 5


def publish_rate(port, token):
    stop = time.time() + SECONDS
    counts = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port)
        n = 0
        while time.time() < stop:
            conn.request("POST", "/.well-known/mercure", body="topic=https://ex.net/news/1&data=x",
                         headers={"Authorization": f"Bearer {token}",
                                  "Content-Type": "application/x-www-form-urlencoded"})
            resp = conn.getresponse()
            resp.read()
            n += resp.status == 200
        counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / SECONDS


def main():
    if not os.path.exists(HERALD):
        sys.exit(f"no herald binary at {HERALD}")
    known = subprocess.run([HERALD, "serve", "--help"], capture_output=True, text=True).stdout
    extra = [a for f in ("--max-connections-per-ip", "--max-distinct-patterns", "--max-patterns")
             if f in known for a in (f, "0" if f != "--max-patterns" else str(PATTERNS))]
    token = subprocess.run([HERALD, "token", "--jwt-key", "k", "--publish", "*"],
                           capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [HERALD, "serve", "--listen", "127.0.0.1:0", "--jwt-key", "k", "--data-dir", data,
             "--history", "memory"] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(server.stdout.readline().rsplit(":", 1)[1])
            time.sleep(0.3)
            base = publish_rate(port, token)
            socks, ok = [], 0
            for c in range(CONNS):
                query = "&".join(
                    "match_urlpattern=" + urllib.parse.quote(f"https://ex.net/c{c}/p{p}/:id", safe="")
                    for p in range(PATTERNS))
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(f"GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                s.settimeout(10)
                ok += s.recv(100).startswith(b"HTTP/1.1 200")
                socks.append(s)
            loaded = publish_rate(port, token)
            print(f"{os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(HERALD))) or HERALD)}: "
                  f"publishes/s {base:.0f} with no patterns, {loaded:.0f} with {ok} connections x "
                  f"{PATTERNS} distinct patterns ({100 * loaded / base:.0f}%)")
            for s in socks:
                s.close()
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
