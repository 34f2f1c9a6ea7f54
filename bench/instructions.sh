#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure machine noise
# cannot blur. Every proxy runs under callgrind with one worker (TOKIO_WORKER_THREADS=1,
# HAProxy nbthread 1); collection is on only around the load (--instr-atstart=no, then
# callgrind_control -i on/off), so start-up is not counted; the load is `wrk -t1 -c4`
# (INSTR_CONNECTIONS) against /o/small (100 B) for INSTR_SECONDS, after a 2-s warm-up.
#
#   INSTR_ORIGIN=http (default)  tokenproxy against bench/floor (the least a hyper proxy does;
#       FLOOR_AFFINITY=1, one upstream connection per client connection, the design tokenproxy
#       uses for cleartext upstreams), both to the same cleartext nginx origin. Prints the two
#       figures, the ratio (target <= 1.2) and the functions whose own (exclusive) instructions
#       per request differ most between the two.
#   INSTR_ORIGIN=https  the deployment users run: the origin is nginx over TLS 1.3 with a
#       certificate from a test CA made here. tokenproxy (ca_file; HTTP/2 by ALPN),
#       tokenproxy-h1 (the same against a port that offers http/1.1 only) and HAProxy (alpn
#       h2,http/1.1, http-reuse always; the fastest peer of https.sh) each proxy the same
#       requests. TLS on both sides is counted (ring in tokenproxy, OpenSSL in HAProxy). Prints
#       the three figures, each one's instructions per request by crate or library, and
#       tokenproxy's top functions.
#
# Usage: bash bench/instructions.sh [TOKENPROXY_BINARY]   (INSTR_SECONDS=10, INSTR_TOP=25;
#   BENCH_KEEP_TMP=1 keeps the callgrind outputs; INSTR_FLOOR_OUT=DIR/floor.out reuses a kept
#   floor run while iterating on tokenproxy; INSTR_FLOOR_BIN=path measures that floor build, e.g.
#   one built like tokenproxy with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only, so inlined
#   functions are named alike in both)
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$(pwd)
BENCH=$ROOT/bench
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
SECONDS_PER_RUN=${INSTR_SECONDS:-10}
CONNECTIONS=${INSTR_CONNECTIONS:-4}
TOP=${INSTR_TOP:-25}
ORIGIN=${INSTR_ORIGIN:-http}
case $ORIGIN in
  http) need valgrind nginx wrk python3 curl ;;
  https) need valgrind nginx haproxy wrk python3 curl openssl ;;
  *) die "INSTR_ORIGIN must be http or https, not $ORIGIN" ;;
esac

if [ -n "${1:-}" ]; then TP=$1; else cargo build --release --locked --quiet; TP=target/release/tokenproxy; fi

bench_tmp tokenproxy-instr
make_token
make_bodies

# measure NAME PORT ENV COMMAND...: COMMAND under callgrind with ENV ("VAR=value ..."; set
# outside valgrind, which would otherwise trace env instead), serving /o/small on PORT; prints
# the number of requests wrk made while counting was on.
measure() {
  local name=$1 port=$2 env=$3 pid out; shift 3
  # shellcheck disable=SC2086
  env TOKIO_WORKER_THREADS=1 RUST_LOG=warn $env valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/$name.out" "$@" \
    >"$TMP/$name.log" 2>&1 & pid=$!
  PIDS+=($pid)
  for _ in $(seq 600); do
    curl -fsS -o /dev/null "http://127.0.0.1:$port/o/small" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || { cat "$TMP/$name.log" >&2; die "$name exited at start (log above)"; }
    sleep 0.1
  done
  # The floor sends a token of its own: 800 times "t".
  local token=$TOKEN; [ "$name" = floor ] && token=$(printf 't%.0s' $(seq 800))
  [ "$(curl -fsS "http://127.0.0.1:$port/o/check")" = "Bearer $token|acme" ] \
    || die "$name does not inject Authorization and Organization as expected"
  # Warm: connections, pools and lazily built state exist before counting starts.
  wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/o/small" >/dev/null
  callgrind_control -i on "$pid" >/dev/null
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/o/small")
  callgrind_control -i off "$pid" >/dev/null
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  printf '%s\n' "$out" | awk '/requests in/ {print $1}'
}

# shellcheck disable=SC2207
PORTS=($(python3 "$BENCH/lib.py" ports 6))
P_ORIGIN=${PORTS[0]} P_ORIGIN_H1=${PORTS[1]} P_A=${PORTS[2]} P_B=${PORTS[3]} P_C=${PORTS[4]}
CHECK='location = /check { default_type text/plain; return 200 "$http_authorization|$http_organization"; }'
if [ "$ORIGIN" = http ]; then
  if [ -n "${INSTR_FLOOR_BIN:-}" ]; then FLOOR=$INSTR_FLOOR_BIN; else
    cargo build --release --quiet --manifest-path bench/floor/Cargo.toml
    FLOOR=bench/floor/target/release/tokenproxy-bench-floor
  fi
  { ngx_common origin; printf '  server { listen 127.0.0.1:%s; root %s/www; %s }\n}\n' "$P_ORIGIN" "$TMP" "$CHECK"; } >"$TMP/origin.conf"
  nginx -c "$TMP/origin.conf" -e "$TMP/origin.err" & PIDS+=($!)
  tp_config "$P_A" "http://127.0.0.1:$P_ORIGIN/" >"$TMP/tokenproxy.toml"
  tp_config "$P_B" "http://127.0.0.1:$P_ORIGIN/" >"$TMP/floor.toml"
  MEASURED=(tokenproxy floor)
  declare -A REQUESTS
  REQUESTS[tokenproxy]=$(measure tokenproxy "$P_A" "" "$TP" run --config "$TMP/tokenproxy.toml")
  if [ "${INSTR_FLOOR_OUT:-}" ]; then
    # While iterating on tokenproxy: the floor's figures from an earlier run, kept with
    # BENCH_KEEP_TMP=1 (FILE.out and the request count as FILE.requests).
    cp "$INSTR_FLOOR_OUT" "$TMP/floor.out"; REQUESTS[floor]=$(cat "${INSTR_FLOOR_OUT%.out}.requests")
  else
    REQUESTS[floor]=$(measure floor "$P_B" FLOOR_AFFINITY=1 "$FLOOR" run --config "$TMP/floor.toml")
    echo "${REQUESTS[floor]}" >"$TMP/floor.requests"
  fi
else
  make_vendor_ca
  { ngx_common origin; cat <<EOF
  ssl_protocols TLSv1.3;
  ssl_certificate $TMP/origin.pem;
  ssl_certificate_key $TMP/origin.key;
  server {
    listen 127.0.0.1:$P_ORIGIN ssl http2;
    listen 127.0.0.1:$P_ORIGIN_H1 ssl;
    root $TMP/www;
    $CHECK
  }
}
EOF
  } >"$TMP/origin.conf"
  nginx -c "$TMP/origin.conf" -e "$TMP/origin.err" & PIDS+=($!)
  tp_config "$P_A" "https://origin.example:$P_ORIGIN/" 'address = "127.0.0.1"' "ca_file = \"$CA\"" >"$TMP/tokenproxy.toml"
  tp_config "$P_B" "https://origin.example:$P_ORIGIN_H1/" 'address = "127.0.0.1"' "ca_file = \"$CA\"" >"$TMP/tokenproxy-h1.toml"
  haproxy_cfg "$P_C" "127.0.0.1:$P_ORIGIN ssl verify required ca-file $CA sni str(origin.example) alpn h2,http/1.1 ssl-min-ver TLSv1.3" \
    "set-header Host origin.example" >"$TMP/haproxy.cfg"
  MEASURED=(tokenproxy tokenproxy-h1 haproxy)
  declare -A REQUESTS
  REQUESTS[tokenproxy]=$(measure tokenproxy "$P_A" "" "$TP" run --config "$TMP/tokenproxy.toml")
  REQUESTS[tokenproxy-h1]=$(measure tokenproxy-h1 "$P_B" "" "$TP" run --config "$TMP/tokenproxy-h1.toml")
  REQUESTS[haproxy]=$(measure haproxy "$P_C" "" haproxy -db -f "$TMP/haproxy.cfg")
fi

for name in "${MEASURED[@]}"; do
  callgrind_annotate --threshold=100 --inclusive=no --auto=no "$TMP/$name.out" >"$TMP/$name.txt" 2>/dev/null
  printf '%s %s\n' "$name" "${REQUESTS[$name]}"
done >"$TMP/requests.txt"
python3 "$BENCH/lib.py" instructions "$TMP" "$ORIGIN" "$TOP" \
  "${TOKENPROXY_REV:-$(git rev-parse --short HEAD)}" "$CONNECTIONS"
