#!/usr/bin/env bash
# tokenproxy benchmark: tokenproxy against nginx, HAProxy, Caddy and mitmproxy doing the same
# job, side by side, over cleartext (bench/https.sh: the same with an HTTPS origin).
#
# What it measures (one run, every target interleaved round-robin per scenario, so machine
# drift hits all alike):
#   targets   direct      wrk -> origin (nginx serving /small, ~100 B, and /large, 64 KiB)
#             nginx       reverse proxy injecting Authorization: Bearer <800-byte token> and
#                         Organization: acme; upstream keep-alive (upstream{} keepalive,
#                         proxy_http_version 1.1, Connection "")
#             haproxy     the same (http-request set-header, http-reuse always,
#                         option http-keep-alive)
#             caddy       reverse_proxy with header_up, upstream keep-alive (GOMAXPROCS=1)
#             mitmproxy   mitmdump --mode reverse:http://origin -s bench/mitm_inject.py
#             tokenproxy  release build, `run --config`: a `static` upstream with the same
#                         token and headers = { Organization = "acme" }, [store] path = "memory"
#             Proxies are reached at /o/small and /o/large; each strips /o before forwarding.
#   load      1, 16 and 128 connections x small and 64 KiB bodies: req/s, p50, p99
#             (`wrk --latency`), ratio to direct, nginx and Caddy, CPU time per request and RSS
#             of each target's processes (/proc/PID/stat and status; RSS sampled while the load
#             runs, the last sample is shown).
#   also      RSS at idle of each proxy; tokenproxy's RSS while a 1 GiB upload and a 1 GiB
#             download stream through it; tokenproxy start-up time, exec to /-/ready = 200
#             (10 runs, median); req/s and p99 at 16 connections (small) while the token is
#             refreshed every second (client_credentials, expires_in 1 from
#             bench/token_server.py), against the same with a static token, with the number
#             of token requests made.
#   targets   from issue 23, checked at the end (PASS/FAIL): see bench/README.md.
#
# Fair on a 2-core machine: one worker for every server (nginx worker_processes 1, haproxy
# nbthread 1, caddy GOMAXPROCS=1, mitmproxy one Python thread, tokenproxy
# TOKIO_WORKER_THREADS=1, origin nginx worker_processes 1); all
# servers pinned to CPU 0 and wrk (one thread) to CPU 1 with taskset, so the load generator
# never steals the proxies' CPU. Access logs off everywhere; keep-alive on both sides of every
# proxy; all on loopback. The header printed at the start says what was chosen.
#
# Usage:   bash bench/run.sh                      (as root, or with sudo, if apt must install)
#   BENCH_SECONDS=10     length of every load run (wrk -d)
#   BENCH_QUICK=1        only 16 connections with the small body, no 1 GiB runs
#   BENCH_ROUNDS=1       rounds per scenario (targets in rotating order; the median is shown)
#   BENCH_STREAM_MIB=1024  size of the streamed upload and download
#   BENCH_PIN=0          do not pin with taskset (BENCH_SERVER_CPU=0, BENCH_CLIENT_CPU=1)
#   TOKENPROXY_BIN=path  use this binary instead of `cargo build --release --locked`
#   BENCH_KEEP_TMP=1     keep the temp dir (configs, logs, wrk outputs)
# Output: plain-text tables on stdout (also bench/out/report.txt) and bench/out/results.json.
# Needs: Debian/Ubuntu apt for nginx, haproxy, caddy, wrk (installed only when missing), curl,
# python3 (mitmproxy goes into bench/.venv from PyPI), a Rust toolchain. Every server is started and stopped by PID on free loopback
# ports, in a temp dir; a trap stops everything on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH=$ROOT/bench
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_QUICK=${BENCH_QUICK:-0}
BENCH_ROUNDS=${BENCH_ROUNDS:-1}
BENCH_STREAM_MIB=${BENCH_STREAM_MIB:-1024}
BENCH_PIN=${BENCH_PIN:-1}
BENCH_SERVER_CPU=${BENCH_SERVER_CPU:-0}
BENCH_CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
TOKEN_TTL=1
STARTUP_RUNS=10
OUT=$BENCH/out

need nginx haproxy caddy wrk curl python3 taskset:util-linux
need_mitmproxy
bench_tmp tokenproxy-bench
tokenproxy_binary
pinning

# ------------------------------------------------------------------ ports, token, bodies
# shellcheck disable=SC2207
PORTS=($(python3 "$BENCH/lib.py" ports 11))
P_ORIGIN=${PORTS[0]} P_NGINX=${PORTS[1]} P_HAPROXY=${PORTS[2]} P_TP=${PORTS[3]}
P_TOKEN=${PORTS[4]} P_TPREF=${PORTS[5]} P_STREAM=${PORTS[6]} P_TPSTREAM=${PORTS[7]} P_TPSTART=${PORTS[8]}
P_CADDY=${PORTS[9]} P_MITM=${PORTS[10]}
make_token
make_bodies

# ------------------------------------------------------------------ origin
{ ngx_common origin; cat <<EOF
  server {
    listen 127.0.0.1:$P_ORIGIN;
    root $TMP/www;
    location = /check { default_type text/plain; return 200 "\$http_authorization|\$http_organization"; }
  }
}
EOF
} >"$TMP/origin.conf"

# ------------------------------------------------------------------ nginx as the proxy
{ ngx_common nginx; cat <<EOF
  upstream origin {
    server 127.0.0.1:$P_ORIGIN;
    keepalive 256;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location /o/ {
      proxy_pass http://origin/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_set_header Organization "acme";
      proxy_buffers 16 8k;   # a 64 KiB answer fits in memory: never a temp file
    }
  }
}
EOF
} >"$TMP/nginx.conf"

# ------------------------------------------------------------------ HAProxy
haproxy_cfg "$P_HAPROXY" "127.0.0.1:$P_ORIGIN" >"$TMP/haproxy.cfg"

# ------------------------------------------------------------------ Caddy
caddyfile "$P_CADDY" "127.0.0.1:$P_ORIGIN" >"$TMP/Caddyfile"

# ------------------------------------------------------------------ tokenproxy configs
tp_config "$P_TP" "http://127.0.0.1:$P_ORIGIN/" >"$TMP/tokenproxy.toml"
tp_config "$P_TPSTART" "http://127.0.0.1:$P_ORIGIN/" >"$TMP/tokenproxy-start.toml"
tp_config "$P_TPSTREAM" "http://127.0.0.1:$P_STREAM/" >"$TMP/tokenproxy-stream.toml"
cat >"$TMP/tokenproxy-refresh.toml" <<EOF
[server]
listen = "127.0.0.1:$P_TPREF"

[store]
path = "memory"

[upstreams.o]
target = "http://127.0.0.1:$P_ORIGIN/"

[upstreams.o.auth]
kind = "client_credentials"
token_url = "http://127.0.0.1:$P_TOKEN/token"
client_id = "bench"
client_secret = "bench-secret"
headers = { Organization = "acme" }
EOF
chmod 600 "$TMP"/tokenproxy*.toml   # they hold the token
"$TP" check --config "$TMP/tokenproxy.toml" >/dev/null || die "tokenproxy rejects the static config"
"$TP" check --config "$TMP/tokenproxy-refresh.toml" >/dev/null || die "tokenproxy rejects the client_credentials config"
nginx -t -q -p "$TMP" -e "$TMP/nginx-test.err" -c "$TMP/nginx.conf" 2>"$TMP/nginx-test.log" \
  || { cat "$TMP/nginx-test.log" >&2; die "nginx rejects its config"; }
haproxy -c -q -f "$TMP/haproxy.cfg" >/dev/null 2>"$TMP/haproxy-test.log" \
  || { cat "$TMP/haproxy-test.log" >&2; die "haproxy rejects its config"; }

# ------------------------------------------------------------------ start the servers
TP_ENV=(env TOKIO_WORKER_THREADS=1)
start origin "${SRV[@]}" nginx -p "$TMP" -e "$TMP/origin.err" -c "$TMP/origin.conf"
start nginx "${SRV[@]}" nginx -p "$TMP" -e "$TMP/nginx.err" -c "$TMP/nginx.conf"
start haproxy "${SRV[@]}" haproxy -db -f "$TMP/haproxy.cfg"
start_caddy "$TMP/Caddyfile"
start_mitmproxy "$P_MITM" "http://127.0.0.1:$P_ORIGIN"
start tokenproxy "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy.toml"
wait_http origin "$PID_origin" "http://127.0.0.1:$P_ORIGIN/small"
wait_http nginx "$PID_nginx" "http://127.0.0.1:$P_NGINX/o/small"
wait_http haproxy "$PID_haproxy" "http://127.0.0.1:$P_HAPROXY/o/small"
wait_http caddy "$PID_caddy" "http://127.0.0.1:$P_CADDY/o/small"
wait_http mitmproxy "$PID_mitmproxy" "http://127.0.0.1:$P_MITM/o/small"
wait_http tokenproxy "$PID_tokenproxy" "http://127.0.0.1:$P_TP/-/ready"

TARGETS=(direct nginx haproxy caddy mitmproxy tokenproxy)
declare -A BASE=([direct]="http://127.0.0.1:$P_ORIGIN" [nginx]="http://127.0.0.1:$P_NGINX/o"
                 [haproxy]="http://127.0.0.1:$P_HAPROXY/o" [caddy]="http://127.0.0.1:$P_CADDY/o"
                 [mitmproxy]="http://127.0.0.1:$P_MITM/o" [tokenproxy]="http://127.0.0.1:$P_TP/o")
declare -A PIDOF=([direct]=$PID_origin [nginx]=$PID_nginx [haproxy]=$PID_haproxy [caddy]=$PID_caddy
                  [mitmproxy]=$PID_mitmproxy [tokenproxy]=$PID_tokenproxy)

# Every target serves the same bytes, and every proxy injects the same headers.
check_targets

# ------------------------------------------------------------------ header
sleep 1
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
git_rev=$(tp_rev)
v_peers=$(versions)
tp_threads=$(threads "$PID_tokenproxy")
say "tokenproxy benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "machine     $(nproc) CPUs, ${cpu_model:-unknown CPU}, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
say "versions    tokenproxy $git_rev, $v_peers"
say "workers     one per server: nginx worker_processes 1 (origin and proxy), haproxy nbthread 1,"
say "            caddy GOMAXPROCS=1, mitmproxy (one Python thread),"
say "            tokenproxy TOKIO_WORKER_THREADS=1 ($tp_threads OS threads in the process at idle)"
say "load avg    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min) at the start"
say "pinning     $PINNING"
say "load        wrk -t1 --latency -d${BENCH_SECONDS}s, rounds $BENCH_ROUNDS, targets round-robin per scenario (order rotates per round)"
say "token       800 bytes, Authorization: Bearer + Organization: acme, injected by every proxy (checked)"
say "quick       $([ "$BENCH_QUICK" = 1 ] && echo 'yes: 16 connections, small body, no streaming runs' || echo no)"

put date "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
put machine "$(python3 -c 'import json,sys; print(json.dumps({"cpus": int(sys.argv[1]), "cpu": sys.argv[2], "kernel": sys.argv[3]}))' "$(nproc)" "$cpu_model" "$(uname -sr)")"
put versions "{\"tokenproxy\": \"$git_rev\", \"peers\": \"$v_peers\"}"
put loadavg_start "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
put settings "{\"bench_seconds\": $BENCH_SECONDS, \"rounds\": $BENCH_ROUNDS, \"quick\": $([ "$BENCH_QUICK" = 1 ] && echo true || echo false), \"pinning\": \"$PINNING\", \"tokenproxy_threads_at_idle\": $tp_threads, \"tokio_worker_threads\": 1}"
put targets "[$(printf '"%s",' "${TARGETS[@]}" | sed 's/,$//')]"
put token_ttl "$TOKEN_TTL"

declare -A IDLE_START
for t in nginx haproxy caddy mitmproxy tokenproxy; do IDLE_START[$t]=$(rss_kib "${PIDOF[$t]}"); done
IDLE_START[origin]=$(rss_kib "$PID_origin")

# ------------------------------------------------------------------ start-up time
say ""
say "start-up: exec to /-/ready = 200, $STARTUP_RUNS runs"
mapfile -t startup < <(python3 "$BENCH/lib.py" startup "$P_TPSTART" "$STARTUP_RUNS" -- \
  "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy-start.toml")
say "    ${startup[*]} ms"
put startup_ms "[$(IFS=,; echo "${startup[*]}" | sed 's/nan/null/g')]"

# ------------------------------------------------------------------ load
say ""
say "warm-up: 1 s per target"
for t in "${TARGETS[@]}"; do
  "${CLI[@]}" timeout 20 wrk -t1 -c16 -d1s "${BASE[$t]}/small" >/dev/null 2>&1 || die "warm-up of $t failed"
done

if [ "$BENCH_QUICK" = 1 ]; then rounds load small 16; else rounds load "small large" "1 16 128"; fi
put loadavg_end "\"$(cut -d' ' -f1-3 /proc/loadavg)\""

sleep 1
idle_json="{"
for t in nginx haproxy caddy mitmproxy tokenproxy origin; do
  pid=${PIDOF[$t]:-$PID_origin}
  idle_json+="\"$t\": {\"start\": ${IDLE_START[$t]}, \"after_load\": $(rss_kib "$pid")},"
done
put idle_rss_kib "${idle_json%,}}"

# ------------------------------------------------------------------ token refresh under load
say ""
say "token refresh under load: 16 connections, small body; static token vs a ${TOKEN_TTL}-second client_credentials token"
start token-server "${SRV[@]}" python3 "$BENCH/token_server.py" "$P_TOKEN" "$TOKEN_TTL"
wait_http token-server "$PID_token_server" "http://127.0.0.1:$P_TOKEN/count"
start tokenproxy-refresh "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy-refresh.toml"
wait_http tokenproxy-refresh "$PID_tokenproxy_refresh" "http://127.0.0.1:$P_TPREF/-/ready"
# The static side is a fresh process too (the one of the load table has served 128 connections).
start tokenproxy-static "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy-start.toml"
wait_http tokenproxy-static "$PID_tokenproxy_static" "http://127.0.0.1:$P_TPSTART/-/ready"
[ "$(curl -sf "http://127.0.0.1:$P_TPREF/o/check" | cut -d' ' -f1)" = Bearer ] || die "the refreshing tokenproxy does not inject its token"
for port in "$P_TPSTART" "$P_TPREF"; do
  "${CLI[@]}" timeout 20 wrk -t1 -c16 -d1s "http://127.0.0.1:$port/o/small" >/dev/null 2>&1 || die "warm-up of tokenproxy on $port failed"
done
for ((round = 0; round < BENCH_ROUNDS; round++)); do
  load refresh static "http://127.0.0.1:$P_TPSTART/o/small" 16 small "$PID_tokenproxy_static" round="$round"
  COUNT_URL="http://127.0.0.1:$P_TOKEN/count" \
    load refresh refresh "http://127.0.0.1:$P_TPREF/o/small" 16 small "$PID_tokenproxy_refresh" round="$round"
done
stop "$PID_tokenproxy_refresh"; stop "$PID_tokenproxy_static"; stop "$PID_token_server"

# ------------------------------------------------------------------ streaming memory
if [ "$BENCH_QUICK" != 1 ]; then
  bytes=$((BENCH_STREAM_MIB * 1024 * 1024))
  say ""
  say "streaming: $BENCH_STREAM_MIB MiB up and down through tokenproxy (RSS sampled every 50 ms)"
  start stream-origin "${SRV[@]}" python3 "$BENCH/lib.py" stream-origin "$P_STREAM"
  start tokenproxy-stream "${SRV[@]}" "${TP_ENV[@]}" "$TP" run --config "$TMP/tokenproxy-stream.toml"
  wait_http stream-origin "$PID_stream_origin" "http://127.0.0.1:$P_STREAM/download?bytes=1"
  wait_http tokenproxy-stream "$PID_tokenproxy_stream" "http://127.0.0.1:$P_TPSTREAM/-/ready"
  truncate -s "$bytes" "$TMP/upload.bin"   # sparse: no disk used
  sleep 0.5
  stream_idle=$(rss_kib "$PID_tokenproxy_stream")
  # peak_while OUTFILE CMD...: runs CMD, samples RSS every 50 ms; sets PEAK, SECS, and CMD's output in OUTFILE.
  peak_while() {
    local outfile=$1; shift
    local t0 s; t0=$(date +%s.%N); PEAK=0
    "$@" >"$outfile" 2>&1 &
    local job=$!
    PIDS+=("$job")
    while kill -0 "$job" 2>/dev/null; do
      s=$(rss_kib "$PID_tokenproxy_stream"); [ "$s" -gt "$PEAK" ] && PEAK=$s
      sleep 0.05
    done
    wait "$job" || true
    SECS=$(python3 -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.3f}")' "$t0")
  }
  peak_while "$TMP/upload.out" "${CLI[@]}" curl -sS -f --max-time 600 -H 'Expect:' -T "$TMP/upload.bin" \
    "http://127.0.0.1:$P_TPSTREAM/o/upload"
  up_peak=$PEAK up_s=$SECS
  up_ok=$([ "$(cat "$TMP/upload.out")" = "$bytes" ] && echo true || echo false)
  peak_while "$TMP/download.out" "${CLI[@]}" curl -sS -f --max-time 600 -o /dev/null -w '%{size_download}' \
    "http://127.0.0.1:$P_TPSTREAM/o/download?bytes=$bytes"
  down_peak=$PEAK down_s=$SECS
  down_ok=$([ "$(cat "$TMP/download.out")" = "$bytes" ] && echo true || echo false)
  say "    idle $stream_idle KiB, upload peak $up_peak KiB in ${up_s}s (complete: $up_ok), download peak $down_peak KiB in ${down_s}s (complete: $down_ok)"
  put stream "{\"mib\": $BENCH_STREAM_MIB, \"idle_kib\": $stream_idle, \"upload_peak_kib\": $up_peak, \"upload_s\": $up_s, \"upload_ok\": $up_ok, \"download_peak_kib\": $down_peak, \"download_s\": $down_s, \"download_ok\": $down_ok}"
  stop "$PID_tokenproxy_stream"; stop "$PID_stream_origin"
  rm -f "$TMP/upload.bin"
fi

# ------------------------------------------------------------------ report
mkdir -p "$OUT"
python3 "$BENCH/lib.py" report "$TMP" "$OUT/results.json" | tee "$OUT/report.txt"
