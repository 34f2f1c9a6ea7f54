#!/usr/bin/env bash
# Memory per open client connection: tokenproxy against bench/floor (FLOOR_AFFINITY=1, one
# upstream connection per client connection, as tokenproxy does for cleartext upstreams),
# both with one worker before the same nginx origin. For each: RSS at rest, then with
# CONN_MEMORY_CONNECTIONS (500) keep-alive connections open, each after one request to
# /o/small, and the growth per connection. CONN_MEMORY_DHAT=1 runs both under
# `valgrind --tool=dhat` instead and prints the heap at its peak per connection and the
# largest allocation sites by bytes per connection (the JSON files are kept).
#
# Usage: bash bench/connection-memory.sh [TOKENPROXY_BINARY]  (FLOOR_BIN=path reuses a floor
#   build). Loopback only; the connections close when the holder exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH=$(pwd)/bench
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
N=${CONN_MEMORY_CONNECTIONS:-500}
need nginx python3 curl
# The DHAT files are kept for a closer look (their dir is printed at the end).
[ "${CONN_MEMORY_DHAT:-0}" = 1 ] && { need valgrind; BENCH_KEEP_TMP=1; }

if [ -n "${1:-}" ]; then TP=$1; else cargo build --release --locked --quiet; TP=target/release/tokenproxy; fi
if [ -n "${FLOOR_BIN:-}" ]; then FLOOR=$FLOOR_BIN; else
  cargo build --release --quiet --manifest-path bench/floor/Cargo.toml
  FLOOR=bench/floor/target/release/tokenproxy-bench-floor
fi

bench_tmp tokenproxy-conn-memory
make_token
make_bodies
# shellcheck disable=SC2207
PORTS=($(python3 "$BENCH/lib.py" ports 2))
P_ORIGIN=${PORTS[0]} P_PROXY=${PORTS[1]}
{ ngx_common origin; printf '  server { listen 127.0.0.1:%s; root %s/www; }\n}\n' "$P_ORIGIN" "$TMP"; } >"$TMP/origin.conf"
start origin nginx -c "$TMP/origin.conf" -e "$TMP/origin.err"
tp_config "$P_PROXY" "http://127.0.0.1:$P_ORIGIN/" >"$TMP/proxy.toml"

say "memory per open client connection ($N keep-alive connections, one request each, one worker)"
for name in tokenproxy floor; do
  bin=$TP; [ "$name" = floor ] && bin=$FLOOR
  prefix=()
  [ "${CONN_MEMORY_DHAT:-0}" = 1 ] && prefix=(valgrind --tool=dhat "--dhat-out-file=$TMP/$name.dhat.json")
  FLOOR_AFFINITY=1 TOKIO_WORKER_THREADS=1 RUST_LOG=warn "${prefix[@]}" "$bin" run --config "$TMP/proxy.toml" \
    >"$TMP/$name.log" 2>&1 & pid=$!
  PIDS+=("$pid")
  wait_http "$name" "$pid" "http://127.0.0.1:$P_PROXY/o/small"
  before=$(rss_kib "$pid")
  python3 "$BENCH/lib.py" hold "$P_PROXY" "$N" >"$TMP/$name.hold" & holder=$!
  # The holder prints once every connection has had its answer, then keeps them 3 s.
  for _ in $(seq 600); do [ -s "$TMP/$name.hold" ] && break; sleep 0.1; done
  [ -s "$TMP/$name.hold" ] || die "$name: the connections were not all answered"
  during=$(rss_kib "$pid")
  wait "$holder"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  printf '  %-10s RSS %6d KiB at rest, %6d KiB with %d connections: %5.1f KiB per connection\n' \
    "$name" "$before" "$during" "$N" "$(python3 -c "print(($during - $before) / $N)")"
  if [ "${CONN_MEMORY_DHAT:-0}" = 1 ]; then
    python3 "$BENCH/lib.py" dhat-top "$TMP/$name.dhat.json" "$N" 8
  fi
done
