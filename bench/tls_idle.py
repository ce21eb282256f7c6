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

With --nchan it measures nginx + nchan the same way (Debian's nginx and
libnginx-mod-nchan, one worker, the same certificate, `listen ... ssl
http2`), reporting its worker's RSS per stream.
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


NCHAN_CONF = """
load_module /usr/lib/nginx/modules/ngx_nchan_module.so;
daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 19000;
pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  http2_max_concurrent_streams 100;
  server {{
    listen 127.0.0.1:{port}{tls};
    {certs}
    location = /.well-known/mercure {{ nchan_subscriber eventsource; nchan_channel_id idle; }}
    location = /metrics {{ nchan_stub_status; }}
  }}
}}
"""


def start_nchan(d, tls):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    certs = f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls else ""
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NCHAN_CONF.format(d=d, port=port, tls=" ssl http2" if tls else "", certs=certs))
    proc = subprocess.Popen(["nginx", "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/error.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while not os.path.exists(f"{d}/nginx.pid"):
        if time.time() > deadline:
            raise SystemExit("nginx did not start")
        time.sleep(0.05)
    time.sleep(0.5)
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        worker = int(f.read().split()[0])
    return proc, worker, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def nchan_subscribers(base, ctx):
    with urllib.request.urlopen(f"{base}/metrics", context=ctx) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("subscribers:"):
                return int(line.split(":")[1])
    return -1


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


def measure(herald, case, n, tls, nchan_dir=None):
    if nchan_dir:
        proc, watched, base = start_nchan(nchan_dir, tls)
        count = nchan_subscribers
    else:
        proc, base = start(herald, tls)
        watched, count = proc.pid, subscribers
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        time.sleep(0.5)
        rss0 = rss_kib(watched)
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
        while count(base, ctx) < n:
            if time.time() > deadline:
                raise SystemExit(f"{case}: only {count(base, ctx)} of {n} streams opened")
            time.sleep(0.2)
        time.sleep(2.0)
        kib = (rss_kib(watched) - rss0) / n
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
        if nchan_dir:
            time.sleep(0.3)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herald", default="target/release/herald")
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--nchan", action="store_true", help="measure nginx + nchan instead")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tls = certs(d)
        for case, label, use_tls in [("h1", "HTTP/1.1 clear text", None),
                                      ("h1", "HTTP/1.1 over TLS", tls),
                                      ("h2-1", "HTTP/2 over TLS, 1 stream/connection", tls),
                                      ("h2-50", "HTTP/2 over TLS, 50 streams/connection", tls)]:
            if a.nchan:
                with tempfile.TemporaryDirectory() as nd:
                    kib = measure(a.herald, case, a.streams, use_tls, nchan_dir=nd)
                who = "nginx+nchan"
            else:
                kib = measure(a.herald, case, a.streams, use_tls)
                who = "herald"
            print(f"{who:12} {label:40} {kib:6.2f} KiB server RSS per stream ({a.streams} streams)", flush=True)


if __name__ == "__main__":
    main()
