#!/usr/bin/env bash
# Every benchmark of bench/ from one command, each bounded in time, and one table at the end.
#
#   1. bench/https.sh         HTTPS to the vendor: tokenproxy (HTTP/2 and HTTP/1.1 upstream),
#                             nginx, HAProxy, Caddy, mitmproxy; req/s, p99, CPU per request,
#                             new origin connections per 10,000 requests
#   2. bench/run.sh           cleartext: the same peers and direct; idle RSS, 1 GiB up and down,
#                             1-s token refresh under load, exec to ready
#   3. bench/egress.sh        egress mode (CONNECT) against nginx as a TLS reverse proxy
#   4. bench/instructions.sh  instructions per request under callgrind, tokenproxy / bench/floor,
#                             then (INSTR_ORIGIN=https) tokenproxy against HAProxy over TLS
#
# Installs what is missing: nginx, haproxy, caddy, wrk, valgrind (apt), mitmproxy (PyPI, into
# bench/.venv). tokenproxy is built once (`cargo build --release --locked`) unless
# TOKENPROXY_BIN names a binary, and every script measures that same copy.
#
# Usage: bash bench/all.sh      (about 20 minutes on 2 cores)
#   ALL_SECONDS=4    seconds per load run in https.sh and run.sh
#   ALL_ROUNDS=3     rounds per cell (medians); egress.sh uses the same
#   ALL_QUICK=1      a check that everything runs: 2 s, 1 round, 16 connections, small body,
#                    no 1 GiB runs, 3 s under callgrind (about 3 minutes)
#   TOKENPROXY_BIN=path   measure this binary
# Output: the combined table on stdout and in bench/out/all.txt; each script's full output in
# bench/out/ (https.txt, report.txt, egress.txt, instructions.txt, and the JSON files).
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$PWD/bench
OUT=$BENCH/out
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

ALL_SECONDS=${ALL_SECONDS:-4}
ALL_ROUNDS=${ALL_ROUNDS:-3}
ALL_QUICK=${ALL_QUICK:-0}
if [ "$ALL_QUICK" = 1 ]; then ALL_SECONDS=2; ALL_ROUNDS=1; fi

need nginx haproxy caddy wrk valgrind curl openssl python3 taskset:util-linux
need_mitmproxy
bench_tmp tokenproxy-bench-all
TOKENPROXY_REV=${TOKENPROXY_REV:-$(tp_rev)}
tokenproxy_binary
export TOKENPROXY_BIN=$TP TOKENPROXY_REV
mkdir -p "$OUT"

# step NAME LIMIT_SECONDS CMD...: one script, its output in bench/out/NAME.log, bounded by timeout.
step() {
  local name=$1 limit=$2; shift 2
  say "== $name ($(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg), at most ${limit}s)"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
    say "   done in $SECONDS s of the whole"
  else
    say "   FAILED (exit $?): the end of bench/out/$name.log:"; tail -5 "$OUT/$name.log"
  fi
}
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$ALL_QUICK" = 1 ]; then
  step https 600 env BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_QUICK=1 bash "$BENCH/https.sh"
  step cleartext 900 env BENCH_SECONDS=2 BENCH_ROUNDS=1 BENCH_QUICK=1 bash "$BENCH/run.sh"
  step egress 900 env BENCH_SECONDS=2 BENCH_ROUNDS=1 bash "$BENCH/egress.sh"
  step instructions 900 env INSTR_SECONDS=3 bash "$BENCH/instructions.sh" "$TP"
  step instructions-https 900 env INSTR_SECONDS=3 INSTR_ORIGIN=https bash "$BENCH/instructions.sh" "$TP"
else
  step https 1200 env BENCH_SECONDS="$ALL_SECONDS" BENCH_ROUNDS="$ALL_ROUNDS" bash "$BENCH/https.sh"
  step cleartext 1500 env BENCH_SECONDS="$ALL_SECONDS" BENCH_ROUNDS="$ALL_ROUNDS" bash "$BENCH/run.sh"
  step egress 900 env BENCH_SECONDS="$ALL_SECONDS" BENCH_ROUNDS="$ALL_ROUNDS" bash "$BENCH/egress.sh"
  step instructions 900 bash "$BENCH/instructions.sh" "$TP"
  step instructions-https 900 env INSTR_ORIGIN=https bash "$BENCH/instructions.sh" "$TP"
fi
for name in egress instructions instructions-https; do cp "$OUT/$name.log" "$OUT/$name.txt"; done

python3 "$BENCH/lib.py" summary "$OUT" "$started" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" \
  "$TOKENPROXY_REV" | tee "$OUT/all.txt"
