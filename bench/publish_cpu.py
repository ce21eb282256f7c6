#!/usr/bin/env python3
"""Server CPU per single publish: prints figures, asserts nothing.

    python3 bench/publish_cpu.py [path/to/herald] [publishes]

Starts a fresh `herald serve --history memory` (so the figure is the
request path, not the disk), publishes PUBLISHES (default 20,000) single
updates to distinct per-user topics from 8 keep-alive Python clients, and
prints publishes/s (bounded by the Python clients) and herald's CPU time
(user + system, from /proc) per publish. Loopback only; it stops what it
starts.
"""
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time

HERALD = sys.argv[1] if len(sys.argv) > 1 else "target/release/herald"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
CLIENTS = 8


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    token = subprocess.run([HERALD, "token", "--jwt-key", "k", "--publish", "*"],
                           capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [HERALD, "serve", "--listen", "127.0.0.1:0", "--jwt-key", "k", "--data-dir", data,
             "--history", "memory"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(server.stdout.readline().rsplit(":", 1)[1])
            time.sleep(0.3)
            per_client = N // CLIENTS

            def publisher(k):
                conn = http.client.HTTPConnection("127.0.0.1", port)
                for i in range(per_client):
                    conn.request("POST", "/.well-known/mercure",
                                 body=f"topic=https://ex.net/users/{k}-{i}&data=x",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/x-www-form-urlencoded"})
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status != 200:
                        sys.exit(f"publish refused: {resp.status}")

            cpu_before, started = cpu_seconds(server.pid), time.time()
            threads = [threading.Thread(target=publisher, args=(k,)) for k in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            took, cpu = time.time() - started, cpu_seconds(server.pid) - cpu_before
            total = per_client * CLIENTS
            print(f"{total / took:,.0f} publishes/s, server CPU {1e6 * cpu / total:.1f} us per publish")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
