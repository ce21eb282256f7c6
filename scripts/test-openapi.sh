#!/usr/bin/env bash
# The HTTP API, written down (src/http/openapi.json, served at
# /.well-known/mercure/openapi.json) and attacked: schemathesis (PyPI)
# generates requests from the document, valid and invalid, against a live
# Herald, and checks that no answer is a 5xx, that every status, media type,
# header and body is one the document gives, and that every error has its
# body shape. Bounded: at most SCHEMATHESIS_EXAMPLES examples per operation
# (default 60) and SCHEMATHESIS_SECONDS seconds (default 30).
#
# The event stream (GET /.well-known/mercure) is left out: a valid
# subscribe never ends, which schemathesis would count as a timeout. Its
# errors are tested in tests/hub_http.rs and tests/edge.rs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "==> installing schemathesis (PyPI)"
  python3 -m pip install --quiet --break-system-packages 'schemathesis>=4,<5' 2>/dev/null \
    || python3 -m pip install --quiet 'schemathesis>=4,<5'
fi
# HERALD_BIN: a herald binary already built (the test command passes the
# one its tests ran); otherwise it is built here.
herald="${HERALD_BIN:-}"
if [ -z "$herald" ]; then
  cargo build --release --locked --bin herald
  herald="$CARGO_TARGET_DIR/release/herald"
fi
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
key="openapi-test-key-$$"
"$herald" serve --listen 127.0.0.1:0 --jwt-key "$key" --data-dir "$work/data" --subscriptions \
  >"$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  url="$(grep -o 'listening on http://[0-9.:]*' "$work/out.log" | head -1 | sed 's/listening on //')" || true
  [ -n "${url:-}" ] && break
  sleep 0.1
done
[ -n "${url:-}" ] || { cat "$work/out.log"; echo "herald did not start"; exit 1; }
token="$("$herald" token --jwt-key "$key" --publish '*' --subscribe '*' --ttl 1h)"
echo "==> schemathesis against $url"
cd "$work"
SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH="$root/scripts" \
schemathesis run "$url/.well-known/mercure/openapi.json" \
  --url "$url" \
  -H "Authorization: Bearer $token" \
  --exclude-operation-id subscribe \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-60}" \
  --max-time "${SCHEMATHESIS_SECONDS:-30}" \
  --request-timeout 10 \
  --seed 20261205 \
  --workers 1
# The hub is still up and answering after all of it.
curl -fsS "$url/readyz" >/dev/null
echo "==> schemathesis: no violation; herald still ready"
