#!/usr/bin/env bash
# HTTPS to the vendor, the deployment users run: a cleartext client on loopback -> a proxy
# that injects Authorization: Bearer <800-byte token> and Organization: acme -> the vendor
# over verified TLS 1.3.
#
#   origin      nginx, TLS 1.3, keep-alive, a certificate for origin.example from a test CA
#               made here with openssl; two ports: one offers h2 and http/1.1 by ALPN (the
#               vendor), one offers http/1.1 only; a cleartext port with stub_status (the
#               connection count)
#   targets     direct      wrk -> origin over TLS (the ceiling: no proxy)
#               nginx       proxy_pass https:// to an upstream{} with keepalive 256,
#                           proxy_ssl_verify on, proxy_ssl_protocols TLSv1.3, session reuse
#                           (nginx speaks HTTP/1.1 to upstreams)
#               haproxy     server ... ssl verify required ca-file, alpn h2,http/1.1,
#                           http-reuse always
#               caddy       reverse_proxy with header_up, transport http { tls,
#                           tls_trusted_ca_certs, tls_server_name } (HTTP/2 by ALPN)
#               mitmproxy   mitmdump --mode reverse:https://... -s bench/mitm_inject.py
#               tokenproxy  target = "https://origin.example:PORT/", address = "127.0.0.1",
#                           ca_file; against the port that offers h2 (ALPN picks it)
#               tokenproxy-h1  the same against the port that offers http/1.1 only
#   cells       16 and 128 connections x /small (100 B) and /large (64 KiB); BENCH_ROUNDS
#               rounds, targets in rotating order; medians
#   figures     req/s, p50, p99 (wrk --latency, the run with the median req/s); CPU µs per
#               request (utime + stime of the proxy's processes from /proc/PID/stat over the
#               run, / requests; median of the rounds); new TLS connections the origin
#               accepted per 10,000 requests (stub_status "accepts" before and after each
#               run; all rounds); the upstream protocol each proxy used (the origin logs its
#               $server_protocol for /check requests only)
#
# One worker each (nginx worker_processes 1, haproxy nbthread 1, caddy GOMAXPROCS=1,
# tokenproxy TOKIO_WORKER_THREADS=1, mitmproxy is one Python thread); servers pinned to CPU 0,
# wrk to CPU 1; no access logs during the load; everything on 127.0.0.1.
#
# Usage: bash bench/https.sh   (BENCH_SECONDS=5, BENCH_ROUNDS=3, BENCH_QUICK=1 (16
#   connections, small body), BENCH_PIN=0, TOKENPROXY_BIN=path, BENCH_KEEP_TMP=1,
#   BENCH_ORIGIN_REQUESTS=1000 (the origin closes each connection after 1,000 requests, as
#   nginx does by default))
# Output: the table on stdout, also bench/out/https.txt and bench/out/https.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
OUT=$BENCH/out
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

BENCH_SECONDS=${BENCH_SECONDS:-5}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}
BENCH_QUICK=${BENCH_QUICK:-0}
# Requests per origin connection before the origin closes it: nginx's default is 1000, what a
# vendor behind nginx does; 1000000 (the default here) lets connections last the whole run.
ORIGIN_REQUESTS=${BENCH_ORIGIN_REQUESTS:-1000000}

need nginx haproxy caddy wrk curl openssl python3 taskset:util-linux
need_mitmproxy
bench_tmp tokenproxy-https-bench
tokenproxy_binary
pinning

# shellcheck disable=SC2207
PORTS=($(python3 "$BENCH/lib.py" ports 9))
P_H2=${PORTS[0]} P_H1=${PORTS[1]} P_STATUS=${PORTS[2]} P_NGINX=${PORTS[3]} P_HAPROXY=${PORTS[4]}
P_CADDY=${PORTS[5]} P_MITM=${PORTS[6]} P_TP=${PORTS[7]} P_TPH1=${PORTS[8]}

# ------------------------------------------------------------------ the vendor's CA, token, bodies
make_vendor_ca
make_token
make_bodies

# ------------------------------------------------------------------ origin
{ ngx_common origin; cat <<EOF
  ssl_protocols TLSv1.3;
  ssl_certificate $TMP/origin.pem;
  ssl_certificate_key $TMP/origin.key;
  ssl_session_cache shared:origin:1m;
  map \$uri \$bench_check { /check 1; default 0; }
  log_format check '\$server_port \$server_protocol \$ssl_protocol \$connection \$connection_requests';
  server {
    listen 127.0.0.1:$P_H2 ssl http2;
    listen 127.0.0.1:$P_H1 ssl;
    root $TMP/www;
    keepalive_requests $ORIGIN_REQUESTS;
    access_log $TMP/origin-check.log check if=\$bench_check;
    location = /check { default_type text/plain; return 200 "\$http_authorization|\$http_organization"; }
  }
  server {
    listen 127.0.0.1:$P_STATUS;
    location = /status { stub_status; }
  }
}
EOF
} >"$TMP/origin.conf"

# ------------------------------------------------------------------ nginx
{ ngx_common nginx; cat <<EOF
  upstream origin {
    server 127.0.0.1:$P_H2;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location /o/ {
      proxy_pass https://origin/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host origin.example;
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_set_header Organization "acme";
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_server_name on;
      proxy_ssl_name origin.example;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $CA;
      proxy_ssl_session_reuse on;
      proxy_buffers 16 8k;   # a 64 KiB answer fits in memory: never a temp file
    }
  }
}
EOF
} >"$TMP/nginx.conf"

# ------------------------------------------------------------------ HAProxy
haproxy_cfg "$P_HAPROXY" "127.0.0.1:$P_H2 ssl verify required ca-file $CA sni str(origin.example) alpn h2,http/1.1 ssl-min-ver TLSv1.3" "set-header Host origin.example" >"$TMP/haproxy.cfg"

# ------------------------------------------------------------------ Caddy
CADDY_HOST=origin.example caddyfile "$P_CADDY" "https://127.0.0.1:$P_H2" \
  "tls_server_name origin.example" "tls_trusted_ca_certs $CA" >"$TMP/Caddyfile"

# ------------------------------------------------------------------ tokenproxy
tp_config "$P_TP" "https://origin.example:$P_H2/" 'address = "127.0.0.1"' "ca_file = \"$CA\"" >"$TMP/tokenproxy.toml"
tp_config "$P_TPH1" "https://origin.example:$P_H1/" 'address = "127.0.0.1"' "ca_file = \"$CA\"" >"$TMP/tokenproxy-h1.toml"
chmod 600 "$TMP"/tokenproxy*.toml   # they hold the token
"$TP" check --config "$TMP/tokenproxy.toml" >/dev/null || die "tokenproxy rejects its config"
nginx -t -q -p "$TMP" -e "$TMP/nginx-test.err" -c "$TMP/nginx.conf" 2>"$TMP/nginx-test.log" \
  || { cat "$TMP/nginx-test.log" >&2; die "nginx rejects its config"; }
haproxy -c -q -f "$TMP/haproxy.cfg" >/dev/null 2>"$TMP/haproxy-test.log" \
  || { cat "$TMP/haproxy-test.log" >&2; die "haproxy rejects its config"; }

# ------------------------------------------------------------------ start
TP_ENV=(env TOKIO_WORKER_THREADS=1 RUST_LOG=warn)
start origin "${SRV[@]}" nginx -p "$TMP" -e "$TMP/origin.err" -c "$TMP/origin.conf"
start nginx "${SRV[@]}" nginx -p "$TMP" -e "$TMP/nginx.err" -c "$TMP/nginx.conf"
start haproxy "${SRV[@]}" haproxy -db -f "$TMP/haproxy.cfg"
start_caddy "$TMP/Caddyfile"
MITM_HOST=origin.example start_mitmproxy "$P_MITM" "https://127.0.0.1:$P_H2" \
  --set ssl_verify_upstream_trusted_ca="$CA" --set tls_version_server_min=TLS1_3
start tokenproxy "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy.toml"
start tokenproxy-h1 "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy-h1.toml"
wait_http origin "$PID_origin" "http://127.0.0.1:$P_STATUS/status"
wait_http nginx "$PID_nginx" "http://127.0.0.1:$P_NGINX/o/small"
wait_http haproxy "$PID_haproxy" "http://127.0.0.1:$P_HAPROXY/o/small"
wait_http caddy "$PID_caddy" "http://127.0.0.1:$P_CADDY/o/small"
wait_http mitmproxy "$PID_mitmproxy" "http://127.0.0.1:$P_MITM/o/small"
wait_http tokenproxy "$PID_tokenproxy" "http://127.0.0.1:$P_TP/-/ready"
wait_http tokenproxy-h1 "$PID_tokenproxy_h1" "http://127.0.0.1:$P_TPH1/-/ready"

TARGETS=(direct nginx haproxy caddy mitmproxy tokenproxy tokenproxy-h1)
declare -A BASE=([direct]="https://127.0.0.1:$P_H2" [nginx]="http://127.0.0.1:$P_NGINX/o"
  [haproxy]="http://127.0.0.1:$P_HAPROXY/o" [caddy]="http://127.0.0.1:$P_CADDY/o"
  [mitmproxy]="http://127.0.0.1:$P_MITM/o" [tokenproxy]="http://127.0.0.1:$P_TP/o"
  [tokenproxy-h1]="http://127.0.0.1:$P_TPH1/o")
declare -A PIDOF=([direct]=$PID_origin [nginx]=$PID_nginx [haproxy]=$PID_haproxy [caddy]=$PID_caddy
  [mitmproxy]=$PID_mitmproxy [tokenproxy]=$PID_tokenproxy [tokenproxy-h1]=$PID_tokenproxy_h1)

# After each proxy's /check: the protocol it spoke to the origin, from the origin's check log.
declare -A PROTOCOL=([direct]="HTTP/1.1 (wrk)")
protocol_of() {
  sleep 0.1
  PROTOCOL[$1]=$(awk 'END {print $2}' "$TMP/origin-check.log")
}
AFTER_CHECK=protocol_of check_targets
protocols="{"
for t in "${TARGETS[@]}"; do protocols+="\"$t\": \"${PROTOCOL[$t]}\","; done
put protocols "${protocols%,}}"

# ------------------------------------------------------------------ header
sleep 1
git_rev=$(tp_rev)
say "tokenproxy HTTPS-upstream benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "machine     $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
say "versions    tokenproxy $git_rev, $(versions)"
say "pinning     $PINNING"
say "load        wrk -t1 --latency -d${BENCH_SECONDS}s, rounds $BENCH_ROUNDS, targets round-robin (order rotates per round)"
say "origin      closes a connection after $ORIGIN_REQUESTS requests (nginx keepalive_requests)"
for t in "${TARGETS[@]}"; do say "upstream    $t: ${PROTOCOL[$t]}"; done
put date "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
put commit "\"$git_rev\""
put loadavg_start "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
put versions "\"$(versions)\""
put settings "{\"bench_seconds\": $BENCH_SECONDS, \"rounds\": $BENCH_ROUNDS, \"pinning\": \"$PINNING\"}"
put targets "[$(printf '"%s",' "${TARGETS[@]}" | sed 's/,$//')]"

say ""
say "warm-up: 1 s per target"
for t in "${TARGETS[@]}"; do
  "${CLI[@]}" timeout 20 wrk -t1 -c16 -d1s "${BASE[$t]}/small" >/dev/null 2>&1 || die "warm-up of $t failed"
done

ORIGIN_STATUS_URL="http://127.0.0.1:$P_STATUS/status"
if [ "$BENCH_QUICK" = 1 ]; then rounds https small 16; else rounds https "small large" "16 128"; fi
put loadavg_end "\"$(cut -d' ' -f1-3 /proc/loadavg)\""

mkdir -p "$OUT"
python3 "$BENCH/lib.py" https-report "$TMP" "$OUT/https.json" | tee "$OUT/https.txt"
