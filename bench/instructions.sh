#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure machine noise
# cannot blur. tokenproxy and bench/floor (the least a hyper proxy does; FLOOR_AFFINITY=1, one
# upstream connection per client connection, the design tokenproxy uses for cleartext
# upstreams) each proxy the same requests to the same nginx origin: `wrk -t1 -c4` (INSTR_CONNECTIONS) against
# /o/small (100 B) for INSTR_SECONDS. Collection is on only around the load
# (--instr-atstart=no, then callgrind_control -i on/off), so start-up is not counted; both
# run with TOKIO_WORKER_THREADS=1 (one thread does the work).
#
# Prints instructions per request for each, the ratio, and the functions whose own
# (exclusive) instructions per request differ most between the two.
#
# Usage: bash bench/instructions.sh [TOKENPROXY_BINARY]   (INSTR_SECONDS=10, INSTR_TOP=25;
#   BENCH_KEEP_TMP=1 keeps the callgrind outputs; INSTR_FLOOR_OUT=DIR/floor.out reuses a kept
#   floor run while iterating on tokenproxy)
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$(pwd)
BENCH=$ROOT/bench
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
SECONDS_PER_RUN=${INSTR_SECONDS:-10}
CONNECTIONS=${INSTR_CONNECTIONS:-4}
TOP=${INSTR_TOP:-25}
need valgrind nginx wrk python3 curl

if [ -n "${1:-}" ]; then TP=$1; else cargo build --release --locked --quiet; TP=target/release/tokenproxy; fi
cargo build --release --quiet --manifest-path bench/floor/Cargo.toml
FLOOR=bench/floor/target/release/tokenproxy-bench-floor

bench_tmp tokenproxy-instr
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_ORIGIN=$(free_port)
make_token
make_bodies
{ ngx_common origin; printf '  server { listen 127.0.0.1:%s; root %s/www; }\n}\n' "$P_ORIGIN" "$TMP"; } >"$TMP/origin.conf"
nginx -c "$TMP/origin.conf" -e "$TMP/origin.err" & PIDS+=($!)

# One proxy under callgrind: prints "requests instructions".
measure() {
  local name=$1 binary=$2 env=$3 port pid out
  port=$(free_port)
  cat >"$TMP/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[store]
path = "memory"
[upstreams.o]
target = "http://127.0.0.1:$P_ORIGIN/"
headers = { Organization = "acme" }
[upstreams.o.auth]
kind = "static"
token = "$TOKEN"
EOF
  env TOKIO_WORKER_THREADS=1 RUST_LOG=warn $env valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$TMP/$name.out" "$binary" run --config "$TMP/$name.toml" \
    2>"$TMP/$name.log" & pid=$!
  PIDS+=($pid)
  for _ in $(seq 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/o/small" 2>/dev/null && break
    sleep 0.1
  done
  # Warm: connections, pools and lazily built state exist before counting starts.
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/o/small" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/o/small")
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  printf '%s\n' "$out" | awk '/requests in/ {print $1}'
}

requests_tp=$(measure tokenproxy "$TP" "")
if [ "${INSTR_FLOOR_OUT:-}" ]; then
  # While iterating on tokenproxy: the floor's figures from an earlier run, kept with
  # BENCH_KEEP_TMP=1 (FILE.out and the request count as FILE.requests).
  cp "$INSTR_FLOOR_OUT" "$TMP/floor.out"; requests_floor=$(cat "${INSTR_FLOOR_OUT%.out}.requests")
else
  requests_floor=$(measure floor "$FLOOR" "FLOOR_AFFINITY=1")
  echo "$requests_floor" >"$TMP/floor.requests"
fi
for name in tokenproxy floor; do
  callgrind_annotate --threshold=100 --inclusive=no "$TMP/$name.out" >"$TMP/$name.txt" 2>/dev/null
done
python3 - "$TMP" "$requests_tp" "$requests_floor" "$TOP" "${TOKENPROXY_REV:-$(git rev-parse --short HEAD)}" "$CONNECTIONS" <<'EOF'
import re, sys
tmp, requests, top, commit, connections = sys.argv[1], {"tokenproxy": int(sys.argv[2]), "floor": int(sys.argv[3])}, int(sys.argv[4]), sys.argv[5], sys.argv[6]
def load(name):
    total, functions = 0, {}
    for line in open(f"{tmp}/{name}.txt"):
        match = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if not match:
            continue
        count, where = int(match.group(1).replace(",", "")), match.group(2)
        if "PROGRAM TOTALS" in where:
            total = count
            continue
        # "file:function [binary]": the function alone, without the hash Rust adds.
        function = where.split(":", 1)[-1].rsplit(" [", 1)[0]
        function = re.sub(r"::h[0-9a-f]{16}$", "", function)
        functions[function] = functions.get(function, 0) + count / requests[name]
    return total / requests[name], functions
tp_total, tp = load("tokenproxy")
floor_total, floor = load("floor")
print(f"instructions per request (callgrind, wrk -t1 -c{connections} to /o/small, commit {commit})")
print(f"  tokenproxy {tp_total:>10,.0f}   ({requests['tokenproxy']} requests)")
print(f"  floor      {floor_total:>10,.0f}   ({requests['floor']} requests)")
print(f"  ratio      {tp_total / floor_total:>10.2f}   (target <= 1.20)")
print(f"\nfunctions by difference of own instructions per request (tokenproxy - floor), top {top}:")
names = set(tp) | set(floor)
rows = sorted(names, key=lambda n: -(tp.get(n, 0) - floor.get(n, 0)))[:top]
for name in rows:
    print(f"  {tp.get(name, 0) - floor.get(name, 0):>+9,.0f}  {tp.get(name, 0):>8,.0f} {floor.get(name, 0):>8,.0f}  {name[:110]}")
EOF
