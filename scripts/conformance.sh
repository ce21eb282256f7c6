#!/usr/bin/env bash
# Run the Mercure project's own conformance suite (Playwright) against
# `herald serve`, with Debian's Chromium. The suite is not vendored: give the
# path of a Mercure checkout (a work tree, or a bare/mirror git dir).
#   scripts/conformance.sh /path/to/mercure
set -euo pipefail
src="${1:?usage: scripts/conformance.sh /path/to/mercure (work tree or git dir)}"
root="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
work="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

for f in mercure.spec.ts package.json package-lock.json; do
  if [ -d "$src/conformance-tests" ]; then cp "$src/conformance-tests/$f" "$work/"
  else git -C "$src" show "HEAD:conformance-tests/$f" > "$work/$f"; fi
done
cat > "$work/playwright.config.ts" <<'CFG'
import type { PlaywrightTestConfig } from "@playwright/test";
const config: PlaywrightTestConfig = {
  testDir: "./.", timeout: 10000, workers: 1, reporter: "list",
  use: {
    baseURL: process.env.BASE_URL,
    launchOptions: { executablePath: "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"] },
  },
  projects: [{ name: "chromium" }],
};
export default config;
CFG
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
(cd "$work" && npm ci --no-audit --no-fund --silent)

cargo build --release --locked
# The suite's token is signed with the Mercure hub's documented development key.
"$CARGO_TARGET_DIR/release/herald" serve --listen 127.0.0.1:0 \
  --jwt-key '!ChangeThisMercureHubJWTSecretKey!' --data-dir "$work/data" > "$work/herald.out" &
pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/herald.out" && break; sleep 0.1; done
base="$(sed -n 's/^listening on //p' "$work/herald.out")"
[ -n "$base" ] || { echo "herald did not start" >&2; exit 1; }
(cd "$work" && BASE_URL="$base/.well-known/mercure" CUSTOM_ID=1 npx playwright test)
