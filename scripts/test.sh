#!/usr/bin/env bash
# Every check and test of tokenproxy. Needs a Rust toolchain, Node.js with npm, Python 3 with
# venv and curl, and Debian's apt-get for the rest (checked first); installs what the tests
# need into the project (npm packages, hadolint's venv and cargo-fuzz under .tools/) or,
# through apt-get, Chromium, Prometheus and Redis. The tests start their own servers on
# 127.0.0.1 and stop them. Leaves `git status` as it found it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Two cores: keep cargo and the test harness from oversubscribing them.
export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1

# What this script cannot install itself (README, "Tests"): said at once, all of it, rather
# than an hour in.
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need cargo "the Rust toolchain: https://rustup.rs"
need node "Node.js 18 or later: sudo apt-get install nodejs"
need npm "sudo apt-get install npm"
need python3 "sudo apt-get install python3 python3-venv"
need curl "sudo apt-get install curl"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ] || [ ! -x "${PROMETHEUS:-/usr/bin/prometheus}" ] \
    || [ ! -x "${REDIS_SERVER:-/usr/bin/redis-server}" ] || ! command -v redis-cli >/dev/null 2>&1; then
    # Installed below from Debian's packages.
    need apt-get "a Debian or Ubuntu system, or install chromium, prometheus and redis-server yourself"
    [ "$(id -u)" = 0 ] || need sudo "root, or sudo, for apt-get"
fi
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    missing+=("python3's venv module (sudo apt-get install python3-venv)")
fi
if [ "${#missing[@]}" -ne 0 ]; then
    echo "scripts/test.sh needs, and did not find:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
fi

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
