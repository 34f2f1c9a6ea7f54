#!/usr/bin/env bash
# What the access log costs: one tokenproxy binary with the access log off (A) and on, JSON
# to a file (B: $TOKENPROXY_ACCESS_LOG, as the config has no [access_log]), measured by
# bench/ab.sh in alternating rounds (one worker thread, servers on CPU 0, wrk on CPU 1, an
# nginx origin). Prints ab.sh's rounds and medians, then what the log received.
#
#   bash bench/access-log.sh                        # builds the release binary first
#   TOKENPROXY_BIN=path bash bench/access-log.sh
#   AB_ROUNDS=7 AB_CONNS=128 bash bench/access-log.sh   # ab.sh's settings apply
# Needs what bench/ab.sh needs (nginx, wrk, taskset). Loopback only; every run bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${TOKENPROXY_BIN:-}" ]; then
  BIN=$TOKENPROXY_BIN
else
  cargo build --release --locked --quiet
  BIN=${CARGO_TARGET_DIR:-target}/release/tokenproxy
fi
LOG_DIR=$(mktemp -d /tmp/tokenproxy-access-log.XXXXXX)
trap 'rm -rf "$LOG_DIR"' EXIT

AB_ENV_B="TOKENPROXY_ACCESS_LOG=$LOG_DIR/access.log" bash bench/ab.sh "$BIN" "$BIN"
echo "access log (B): $(wc -l <"$LOG_DIR/access.log") lines, $(du -h "$LOG_DIR/access.log" | cut -f1); the last:"
tail -n 1 "$LOG_DIR/access.log"
