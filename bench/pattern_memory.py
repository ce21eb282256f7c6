#!/usr/bin/env python3
"""Memory per distinct URL Pattern subscription: prints figures, asserts nothing.

    python3 bench/pattern_memory.py [path/to/herald] [connections]

For each kind of pattern it starts a fresh `herald serve` on loopback, opens
CONNECTIONS anonymous subscriptions (default 50) with 20 distinct
`match_urlpattern` selectors each, and prints how much herald's RSS grew per
pattern. "plain" and "wildcard" are what applications use; "attack" is the
shape of the regex-DoS attack (word classes repeated in two components),
which was expensive with Unicode classes; patterns are now compiled without
them (and `\p{..}` is refused). Works with older builds too (flags they do
not know are left out), for a before/after.
Loopback only; everything it starts, it stops.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERALD = sys.argv[1] if len(sys.argv) > 1 else "target/release/herald"
CONNS = int(sys.argv[2]) if len(sys.argv) > 2 else 50
KINDS = {
    "plain": "https://ex.net/c{c}p{p}/:id",
    "wildcard": "https://ex.net/users/:user/c{c}p{p}/*",
    "attack": "https://ex/c{c}p{p}/:a([\\w]{{5}})#:f([\\w]{{5}})",
}


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(kind, template):
    with tempfile.TemporaryDirectory() as data:
        known = subprocess.run([HERALD, "serve", "--help"], capture_output=True, text=True).stdout
        extra = [arg for flag in ("--max-connections-per-ip", "--max-distinct-patterns")
                 if flag in known for arg in (flag, "0")]
        server = subprocess.Popen(
            [HERALD, "serve", "--listen", "127.0.0.1:0", "--jwt-key", "k",
             "--data-dir", data] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            port = int(line.rsplit(":", 1)[1])
            time.sleep(0.3)
            before = rss_kib(server.pid)
            socks, ok, status = [], 0, ""
            for c in range(CONNS):
                query = "&".join(
                    "match_urlpattern=" + urllib.parse.quote(template.format(c=c, p=p), safe="")
                    for p in range(20))
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(f"GET /.well-known/mercure?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                s.settimeout(10)
                head = s.recv(200)
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                ok += head.startswith(b"HTTP/1.1 200")
                socks.append(s)
            grown = rss_kib(server.pid) - before
            patterns = CONNS * 20
            if ok:
                print(f"{kind:<9} {ok}/{CONNS} accepted x 20 patterns: +{grown} KiB, "
                      f"{grown / (ok * 20):.1f} KiB per distinct pattern")
            else:
                print(f"{kind:<9} refused ({status}); RSS +{grown} KiB for {patterns} attempts")
            for s in socks:
                s.close()
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    if not os.path.exists(HERALD):
        sys.exit(f"no herald binary at {HERALD}: cargo build --release first")
    for kind, template in KINDS.items():
        run(kind, template)
