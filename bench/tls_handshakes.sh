#!/usr/bin/env bash
# New TLS connections per second: every request on a connection of its own
# (a full TLS 1.3 handshake each, P-256 certificate), HTTP/1.1 and HTTP/2,
# against Herald (/healthz) and nginx (a static 200), same certificate,
# same machine, by h2load (Debian's nghttp2-client).
#
#   bash bench/tls_handshakes.sh [HERALD_BINARY] [CONNECTIONS]
#
# Loopback only; each run is CONNECTIONS requests (default 5,000) over as
# many connections, all opened at once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
herald="${1:-$root/target/release/herald}"
n="${2:-5000}"
command -v h2load >/dev/null || { echo "needs h2load: apt-get install nghttp2-client" >&2; exit 1; }
tmp="$(mktemp -d)"
hpid=""; npid=""
cleanup() {
  [ -n "$hpid" ] && kill "$hpid" 2>/dev/null || true
  [ -n "$npid" ] && kill "$npid" 2>/dev/null || true
  sleep 0.3; rm -rf "$tmp"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -days 2 -subj /CN=localhost >/dev/null 2>&1

"$herald" serve --listen 127.0.0.1:0 --jwt-key bench --history memory --tls-cert "$tmp/cert.pem" \
  --tls-key "$tmp/key.pem" --max-connections 0 --max-connections-per-ip 0 > "$tmp/herald.out" 2>/dev/null &
hpid=$!
for _ in $(seq 100); do grep -q "listening on" "$tmp/herald.out" && break; sleep 0.05; done
hurl="$(sed -n 's/^listening on //p' "$tmp/herald.out")/healthz"

nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/n"
cat > "$tmp/n/nginx.conf" <<EOF
daemon off; master_process on; worker_processes 1; worker_rlimit_nofile 19000;
pid $tmp/n/nginx.pid; error_log $tmp/n/error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  client_body_temp_path $tmp/n/body; proxy_temp_path $tmp/n/proxy; fastcgi_temp_path $tmp/n/fcgi;
  uwsgi_temp_path $tmp/n/uwsgi; scgi_temp_path $tmp/n/scgi;
  server {
    listen 127.0.0.1:$nport ssl http2;
    ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { return 200 "ok\n"; }
  }
}
EOF
nginx -p "$tmp/n" -c "$tmp/n/nginx.conf" -e "$tmp/n/error.log" &
npid=$!
sleep 0.5
nurl="https://127.0.0.1:$nport/healthz"

echo "server         protocol  new TLS connections/s  (h2load -n $n -c $n -m 1)"
for target in herald nginx; do
  url="$hurl"; [ "$target" = nginx ] && url="$nurl"
  for proto in h1 h2; do
    flag=""; [ "$proto" = h1 ] && flag="--h1"
    best=0
    for round in 1 2 3; do
      out="$(h2load $flag -n "$n" -c "$n" -m 1 -t 1 "$url" 2>&1 || true)"
      ok="$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$out")"
      rps="$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")"
      [ "${ok:-0}" = "$n" ] || { echo "$target $proto: only ${ok:-0} of $n succeeded" >&2; echo "$out" >&2; exit 1; }
      best="$(python3 -c "print(max($best, ${rps:-0}))")"
    done
    printf '%-14s %-9s %s\n' "$target" "$proto" "$best"
  done
done
