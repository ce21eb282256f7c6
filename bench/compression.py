#!/usr/bin/env python3
"""Compressed event streams: bytes on the wire, server CPU per delivered
event, and memory per idle stream, with and without gzip.

    python3 bench/compression.py [--herald target/release/herald]
        [--subscribers 1000] [--updates 1000] [--idle 5000]

For each kind of stream (the dashboard example's samples, a notification
center's notifications) and each setting (Accept-Encoding: gzip or not),
it starts a fresh Herald (memory history), opens the subscribers, publishes
the updates one at a time, and waits until the subscribers stop receiving.
It reports the bytes each subscriber read off the socket (HTTP framing
included), the server's CPU time per delivered event (/proc), and checks
by decoding five of the streams that every event arrived. Then it opens
`--idle` idle streams with and without gzip and reports the server's RSS
per stream. Loopback only; bounded by the counts given.

With --tls the same runs go over TLS (HTTP/1.1, a P-256 certificate made
here by openssl): server CPU per delivered event with and without TLS is
the lean stream path's cost of encryption.
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
import urllib.request
import zlib

KEY = "bench-key-compression"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token():
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"mercure": {"publish": ["*"], "subscribe": ["*"]}}).encode())
    sig = hmac.new(KEY.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


TLS = None  # (cert, key) with --tls
SSL_CTX = None


def start(herald, compression):
    args = [herald, "serve", "--listen", "127.0.0.1:0", "--jwt-key", KEY, "--history", "memory",
            "--max-connections", "0", "--max-connections-per-ip", "0",
            "--compression", "true" if compression else "false"]
    if TLS:
        args += ["--tls-cert", TLS[0], "--tls-key", TLS[1]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            addr = line.split("://")[1].strip()
            host, port = addr.rsplit(":", 1)
            return proc, host, int(port)
    raise SystemExit("herald did not start")


def dashboard(seq):
    sample = {"seq": seq, "t": 1733390000000 + seq * 1000, "cpu": round(random.uniform(3, 60), 1),
              "mem_used": random.randint(3_000_000_000, 4_000_000_000), "mem_total": 16_624_340_992,
              "rx": round(random.uniform(1e3, 1e6)), "tx": round(random.uniform(1e3, 1e6)),
              "price": round(100 + random.uniform(-5, 5), 2)}
    log = [f"12:{seq // 60 % 60:02}:{seq % 60:02} sample {seq}: cpu {sample['cpu']} % · memory 3512 / 15854 MiB"] \
        if seq % 10 == 0 else []
    return json.dumps({"kind": "sample", "sample": sample, "log": log})


def notification(seq):
    who = random.choice(["alice", "bob", "carol", "dave"])
    kind = random.choice(["comment", "like", "mention", "follow"])
    return json.dumps({"id": seq, "user": "bob", "from": who, "type": kind,
                       "body": f"{who} left a {kind} on your post \"Quarterly numbers, draft {seq % 7}\"",
                       "created_at": 1733390000 + seq, "status": "UNREAD"})


class Sub:
    def __init__(self, keep):
        self.bytes = 0
        self.keep = keep
        self.raw = bytearray()
        self.writer = None


async def subscriber(host, port, gzip, sub, opened):
    reader, writer = await asyncio.open_connection(host, port, ssl=SSL_CTX,
                                                   server_hostname="localhost" if SSL_CTX else None)
    sub.writer = writer
    enc = "Accept-Encoding: gzip\r\n" if gzip else ""
    writer.write(f"GET /.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fbench HTTP/1.1\r\n"
                 f"Host: bench\r\nAccept: text/event-stream\r\n{enc}\r\n".encode())
    opened.release()
    while True:
        data = await reader.read(65536)
        if not data:
            return
        sub.bytes += len(data)
        if sub.keep:
            sub.raw += data


def decode(raw, gzip):
    head, _, body = bytes(raw).partition(b"\r\n\r\n")
    out = bytearray()
    while body:
        line, _, rest = body.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    if gzip:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(out)), head
    return bytes(out), head


async def fanout(herald, kind, gzip, subscribers, updates):
    proc, host, port = start(herald, gzip)
    try:
        opened = asyncio.Semaphore(0)
        subs = [Sub(keep=i < 5) for i in range(subscribers)]
        tasks = [asyncio.create_task(subscriber(host, port, gzip, s, opened)) for s in subs]
        for _ in subs:
            await opened.acquire()
        await asyncio.sleep(1.0)
        before_bytes = [s.bytes for s in subs]
        make = dashboard if kind == "dashboard" else notification
        bodies = [make(i) for i in range(updates)]
        auth = f"Bearer {token()}"
        cpu0 = cpu_seconds(proc.pid)

        def publish_all():
            for data in bodies:
                form = urllib.parse.urlencode({"topic": "https://example.com/bench", "data": data}).encode()
                scheme = "https" if SSL_CTX else "http"
                req = urllib.request.Request(f"{scheme}://{host}:{port}/.well-known/mercure", data=form,
                                             headers={"Authorization": auth})
                urllib.request.urlopen(req, context=SSL_CTX).read()

        import urllib.parse  # noqa: F401  (used by publish_all)
        await asyncio.get_running_loop().run_in_executor(None, publish_all)
        last, still = -1, 0
        while still < 5:
            await asyncio.sleep(0.1)
            total = sum(s.bytes for s in subs)
            still = still + 1 if total == last else 0
            last = total
        cpu = cpu_seconds(proc.pid) - cpu0 - 0.5 * 0  # the idle tail costs ~nothing
        per_sub = sum(s.bytes - b for s, b in zip(subs, before_bytes)) / subscribers
        for s in subs[:5]:
            text, head = decode(s.raw, gzip)
            events = text.count(b"\nid: ") + text.startswith(b"id: ")
            if events != updates:
                raise SystemExit(f"a subscriber decoded {events} of {updates} events ({kind}, gzip={gzip})")
            enc = b"content-encoding: gzip" in head.lower()
            if enc != gzip:
                raise SystemExit(f"Content-Encoding gzip={enc}, asked {gzip}")
        for s in subs:
            s.writer.close()
        for t in tasks:
            t.cancel()
        return {"kind": kind, "gzip": gzip, "bytes_per_subscriber": per_sub,
                "bytes_per_event": per_sub / updates, "cpu_s": cpu,
                "cpu_us_per_delivery": cpu / (subscribers * updates) * 1e6}
    finally:
        proc.terminate()
        proc.wait()


async def idle(herald, gzip, n):
    proc, host, port = start(herald, gzip)
    try:
        await asyncio.sleep(0.5)
        rss0 = rss_kib(proc.pid)
        opened = asyncio.Semaphore(0)
        subs = [Sub(keep=False) for _ in range(n)]
        tasks = []
        for i, s in enumerate(subs):
            tasks.append(asyncio.create_task(subscriber(host, port, gzip, s, opened)))
            if i % 200 == 199:
                for _ in range(200):
                    await opened.acquire()
        await asyncio.sleep(2.0)
        rss1 = rss_kib(proc.pid)
        for s in subs:
            if s.writer:
                s.writer.close()
        for t in tasks:
            t.cancel()
        return (rss1 - rss0) / n
    finally:
        proc.terminate()
        proc.wait()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herald", default="target/release/herald")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--updates", type=int, default=1000)
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--tls", action="store_true")
    a = p.parse_args()
    if a.tls:
        global TLS, SSL_CTX
        import ssl
        import tempfile
        d = tempfile.mkdtemp()
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "2",
                        "-subj", "/CN=localhost"], check=True, capture_output=True)
        TLS = (f"{d}/cert.pem", f"{d}/key.pem")
        SSL_CTX = ssl.create_default_context()
        SSL_CTX.check_hostname = False
        SSL_CTX.verify_mode = ssl.CERT_NONE
    random.seed(7)
    rows = []
    for kind in ("dashboard", "notifications"):
        for gzip in (False, True):
            random.seed(7)
            r = await fanout(a.herald, kind, gzip, a.subscribers, a.updates)
            rows.append(r)
            print(f"{'tls ' if a.tls else ''}{kind:13} gzip={str(gzip):5}  {r['bytes_per_event']:7.1f} bytes/event on the wire  "
                  f"{r['cpu_us_per_delivery']:6.2f} us server CPU per delivered event", flush=True)
    for gzip in (False, True):
        kib = await idle(a.herald, gzip, a.idle)
        print(f"{'tls ' if a.tls else ''}idle stream   gzip={str(gzip):5}  {kib:5.2f} KiB server RSS per stream ({a.idle} streams)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    asyncio.run(main())
