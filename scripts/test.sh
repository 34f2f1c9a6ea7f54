#!/usr/bin/env bash
# Every check and test of tokenproxy, on a fresh machine with only a Rust toolchain.
# Everything the tests need is installed or started from here; the tests themselves start
# their own servers on 127.0.0.1 and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Two cores: keep cargo and the test harness from oversubscribing them.
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

echo "== Chromium for the browser-guard and status-page tests (Debian's package)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

echo "== Prometheus for the metrics test (Debian's prometheus package)"
if [ ! -x "${PROMETHEUS:-/usr/bin/prometheus}" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== redis-server and redis-cli for the fleet tests (Debian's redis-server)"
if [ ! -x "${REDIS_SERVER:-/usr/bin/redis-server}" ] || ! command -v redis-cli >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi
# The package starts a system Redis on 6379; the tests start their own on free ports.

echo "== curl and Python requests for the egress tests (Debian's curl, python3-requests)"
if ! command -v curl >/dev/null || ! python3 -c 'import requests' 2>/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends curl python3-requests >/dev/null
fi

echo "== npm packages for the interop, browser and egress tests (oidc-provider, puppeteer-core, undici)"
npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

echo "== format"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# Without the default `demo` feature: the binary builds with no simulator in it.
cargo clippy --locked --no-default-features --lib --bins -- -D warnings

echo "== tests"
cargo test --locked --workspace --all-targets
cargo test --locked --doc

echo "== Dockerfile lint (hadolint)"
bash scripts/hadolint.sh

echo "== Postman collection against tokenproxy demo (newman)"
TOKENPROXY_BIN="${CARGO_TARGET_DIR:-target}/debug/tokenproxy" bash scripts/postman.sh

echo "== fuzz (config parsing, path normalisation + routing), bounded"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}" bash scripts/fuzz.sh
