#!/usr/bin/env bash
# Egress mode against nginx doing the same job as a TLS reverse proxy: same client, same
# origin, same headers injected (Authorization: Bearer <800-byte token>, Organization: acme).
#
#   origin      nginx, HTTPS (TLS 1.3) for origin.example on 127.0.0.1, /small (100 B) and
#               /large (64 KiB), a certificate from a CA of the bench's (the vendor's CA)
#   egress      client -> CONNECT origin.example:PORT through tokenproxy's egress listener ->
#               TLS terminated by tokenproxy (a leaf from its local CA, `ca init`) -> the
#               token injected -> origin over verified TLS (ca_file, address = 127.0.0.1),
#               upstream keep-alive
#   nginx       client -> TLS to nginx (a certificate for origin.example from the vendor's CA)
#               -> proxy_set_header -> origin over verified TLS (proxy_ssl_verify on,
#               proxy_ssl_name, session reuse), upstream keep-alive
#   client      bench/tlsload: N keep-alive HTTP/1.1 connections over TLS, each first opening
#               its tunnel when going through the egress listener (wrk cannot); one thread
#   cells       16 and 128 connections x /small and /large; BENCH_ROUNDS rounds, the two
#               targets alternating (the first of each round swaps), medians shown
#   figures     req/s, p50 and p99 from the client; the proxy's CPU time (user + system, from
#               /proc) per request
#
# One worker each (nginx worker_processes 1, tokenproxy TOKIO_WORKER_THREADS=1), servers
# pinned to CPU 0 and the client to CPU 1 (taskset), access logs off, all on loopback.
#
# Usage: bash bench/egress.sh   (BENCH_SECONDS=5, BENCH_ROUNDS=3, TOKENPROXY_BIN=path,
#                                BENCH_KEEP_TMP=1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH=$ROOT/bench
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
need nginx openssl python3 curl taskset:util-linux
bench_tmp tokenproxy-egress-bench

# ------------------------------------------------------------------ builds
tokenproxy_binary
cargo build --release --quiet --manifest-path bench/tlsload/Cargo.toml
LOAD=bench/tlsload/target/release/tokenproxy-bench-tlsload
SRV=(taskset -c 0); CLI=(taskset -c 1)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_ORIGIN=$(free_port); P_NGINX=$(free_port); P_EGRESS=$(free_port); P_MAIN=$(free_port)

# ------------------------------------------------------------------ the vendor's CA and certificates
make_vendor_ca

make_token
make_bodies

# nginx_conf NAME BODY: ngx_common's head, TLS 1.3 only, then BODY.
nginx_conf() {
  { ngx_common "$1"; printf '  ssl_protocols TLSv1.3;\n  ssl_session_cache shared:%s:1m;\n%s\n}\n' "$1" "$2"; } >"$TMP/$1.conf"
}
nginx_conf origin "  server {
    listen 127.0.0.1:$P_ORIGIN ssl http2;
    ssl_certificate $TMP/origin.pem;
    ssl_certificate_key $TMP/origin.key;
    root $TMP/www;
    location = /check { default_type text/plain; return 200 \"\$http_authorization|\$http_organization\"; }
  }"
nginx_conf front "  upstream origin {
    server 127.0.0.1:$P_ORIGIN;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$P_NGINX ssl;
    ssl_certificate $TMP/origin.pem;
    ssl_certificate_key $TMP/origin.key;
    location / {
      proxy_pass https://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host origin.example;
      proxy_set_header Authorization \"Bearer $TOKEN\";
      proxy_set_header Organization \"acme\";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_server_name on;
      proxy_ssl_name origin.example;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $CA;
      proxy_ssl_session_reuse on;
      proxy_buffers 16 8k;
    }
  }"

cat >"$TMP/tokenproxy.toml" <<EOF
[server]
listen = "127.0.0.1:$P_MAIN"
[store]
path = "memory"
[egress]
listen = "127.0.0.1:$P_EGRESS"
ca_dir = "$TMP/egress-ca"
[upstreams.origin]
target = "https://origin.example:$P_ORIGIN/"
address = "127.0.0.1"
ca_file = "$CA"
headers = { Organization = "acme" }
[upstreams.origin.auth]
kind = "static"
token = "$TOKEN"
EOF
"$TP" --config "$TMP/tokenproxy.toml" ca init >/dev/null

"${SRV[@]}" nginx -c "$TMP/origin.conf" -e "$TMP/origin.err" & PIDS+=($!)
"${SRV[@]}" nginx -c "$TMP/front.conf" -e "$TMP/front.err" & PIDS+=($!)
TOKIO_WORKER_THREADS=1 RUST_LOG=warn "${SRV[@]}" "$TP" --config "$TMP/tokenproxy.toml" run 2>"$TMP/tokenproxy.log" & TP_PID=$!; PIDS+=($TP_PID)
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$P_MAIN/-/ready" 2>/dev/null && [ -s "$TMP/front.pid" ] && break
  sleep 0.1
done
FRONT_WORKER=$(pgrep -P "$(cat "$TMP/front.pid")" | head -1)

# Both inject the same headers: the origin's /check shows what it got.
via_egress=$(curl -fsS -x "http://127.0.0.1:$P_EGRESS" --cacert "$TMP/egress-ca/ca.pem" "https://origin.example:$P_ORIGIN/check")
via_nginx=$(curl -fsS --resolve "origin.example:$P_NGINX:127.0.0.1" --cacert "$CA" "https://origin.example:$P_NGINX/check")
[ "$via_egress" = "Bearer $TOKEN|acme" ] || die "egress injected something else: ${via_egress:0:60}"
[ "$via_nginx" = "Bearer $TOKEN|acme" ] || die "nginx injected something else: ${via_nginx:0:60}"

TICK=$(getconf CLK_TCK)

# One run: prints "rps p50 p99 cpu_us_per_request".
run() {
  local target=$1 connections=$2 path=$3 pid args before after out
  if [ "$target" = egress ]; then
    pid=$TP_PID; args=(--dial "127.0.0.1:$P_EGRESS" --proxy --host "origin.example:$P_ORIGIN" --ca "$TMP/egress-ca/ca.pem")
  else
    pid=$FRONT_WORKER; args=(--dial "127.0.0.1:$P_NGINX" --host "origin.example:$P_NGINX" --ca "$CA")
  fi
  before=$(cpu_ticks "$pid")
  out=$("${CLI[@]}" "$LOAD" "${args[@]}" --path "$path" --connections "$connections" --seconds "$SECONDS_PER_RUN")
  after=$(cpu_ticks "$pid")
  python3 - "$out" "$before" "$after" "$TICK" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]); ticks = int(sys.argv[3]) - int(sys.argv[2])
if r["errors"]: print(f"bench: {r['errors']} errors", file=sys.stderr)
print(r["rps"], r["p50_us"], r["p99_us"], round(ticks / int(sys.argv[4]) * 1e6 / max(r["requests"], 1), 1))
EOF
}

say "tokenproxy egress vs nginx TLS reverse proxy; $(date -u +%FT%TZ); ${TOKENPROXY_REV:-$(git rev-parse --short HEAD)}; $(nproc) CPUs; ${SECONDS_PER_RUN}s runs, $ROUNDS rounds, medians"
printf '%-6s %5s %-10s %10s %9s %9s %12s\n' body conns target 'req/s' 'p50 ms' 'p99 ms' 'CPU µs/req'
for path in /small /large; do
  for connections in 16 128; do
    declare -A results=()
    for round in $(seq "$ROUNDS"); do
      if [ $((round % 2)) = 1 ]; then order=(egress nginx); else order=(nginx egress); fi
      for target in "${order[@]}"; do
        results[$target]+="$(run "$target" "$connections" "$path")"$'\n'
      done
    done
    for target in egress nginx; do
      printf '%s' "${results[$target]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
rps, p50, p99, cpu = (statistics.median(column) for column in zip(*rows))
print(f"{sys.argv[1]:<6} {sys.argv[2]:>5} {sys.argv[3]:<10} {rps:>10,.0f} {p50/1000:>9.2f} {p99/1000:>9.2f} {cpu:>12.1f}")
' "${path#/}" "$connections" "$target"
    done
    unset results
  done
done
