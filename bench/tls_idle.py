#!/usr/bin/env python3
"""Idle memory per subscriber: HTTP/1.1 in clear text, HTTP/1.1 over TLS,
HTTP/2 over TLS with 1 stream per connection and with 50.

    python3 bench/tls_idle.py [--herald target/release/herald] [--streams 5000]

Each case starts a fresh Herald (memory history; TLS with a P-256
certificate made here by openssl), opens `--streams` idle event streams,
waits until `herald_subscribers` says they are all in, and reports the
growth of the server's RSS per stream. HTTP/1.1 clients are Python
asyncio sockets (ssl for TLS); HTTP/2 streams are held open by h2load
(nghttp2-client), which never sees them finish and is killed after the
reading. No compression is asked for. Loopback only.
"""
import argparse
import asyncio
import os
import ssl
import subprocess
import tempfile
import time
import urllib.request

KEY = "bench-key-tls"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def certs(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return f"{d}/cert.pem", f"{d}/key.pem"


def start(herald, tls):
    args = [herald, "serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY, "--history", "memory",
            "--max-connections", "0", "--max-connections-per-ip", "0", "--h2-max-streams", "100"]
    if tls:
        args += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split("listening on ")[1].strip()
    raise SystemExit("herald did not start")


def subscribers(base, ctx):
    with urllib.request.urlopen(f"{base}/metrics", context=ctx) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("herald_subscribers "):
                return int(line.split()[1])
    return -1


async def h1_streams(base, n, ctx):
    host, port = base.split("://")[1].rsplit(":", 1)
    held = []
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection(host, int(port), ssl=ctx,
                                                 server_hostname="localhost" if ctx else None)
            w.write(b"GET /.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fidle HTTP/1.1\r\n"
                    b"Host: localhost\r\nAccept: text/event-stream\r\n\r\n")
            await r.readuntil(b"\r\n\r\n")
            held.append((r, w))

    await asyncio.gather(*(one() for _ in range(n)))
    return held


def measure(herald, case, n, tls):
    proc, base = start(herald, tls)
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        time.sleep(0.5)
        rss0 = rss_kib(proc.pid)
        h2load = None
        loop = asyncio.new_event_loop()
        held = None
        if case.startswith("h2"):
            per = 1 if case == "h2-1" else 50
            h2load = subprocess.Popen(
                ["h2load", "-n", str(n), "-c", str(n // per), "-m", str(per), "-t", "1",
                 "-H", "accept: text/event-stream",
                 f"{base}/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fidle"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            held = loop.run_until_complete(h1_streams(base, n, ctx))
        deadline = time.time() + 60
        while subscribers(base, ctx) < n:
            if time.time() > deadline:
                raise SystemExit(f"{case}: only {subscribers(base, ctx)} of {n} streams opened")
            time.sleep(0.2)
        time.sleep(2.0)
        kib = (rss_kib(proc.pid) - rss0) / n
        if h2load:
            h2load.kill()
            h2load.wait()
        if held:
            for _, w in held:
                w.close()
        loop.close()
        return kib
    finally:
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herald", default="target/release/herald")
    p.add_argument("--streams", type=int, default=5000)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tls = certs(d)
        for case, label, use_tls in [("h1", "HTTP/1.1 clear text", None),
                                      ("h1", "HTTP/1.1 over TLS", tls),
                                      ("h2-1", "HTTP/2 over TLS, 1 stream/connection", tls),
                                      ("h2-50", "HTTP/2 over TLS, 50 streams/connection", tls)]:
            kib = measure(a.herald, case, a.streams, use_tls)
            print(f"{label:40} {kib:6.2f} KiB server RSS per stream ({a.streams} streams)", flush=True)


if __name__ == "__main__":
    main()
