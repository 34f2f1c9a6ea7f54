#!/usr/bin/env bash
# A/B: two tokenproxy binaries (or one binary with two environments) behind the same nginx
# origin, measured in alternating rounds so machine drift hits both alike. Prints req/s and
# the proxy's CPU time per request (user and system, from /proc), per round and as medians,
# and each proxy's RSS at the end.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY            # e.g. a build of main against yours
#   AB_PATH=/large AB_CONNS=128 bash bench/ab.sh A B   # 64 KiB bodies, 128 connections
#
#   AB_ORIGIN=https bash bench/ab.sh A B               # the vendor behind TLS 1.3 (h2 by ALPN)
#
# Settings: AB_ROUNDS (5), AB_SECONDS (5 per run), AB_CONNS (16), AB_PATH (/small),
# AB_ENV_A / AB_ENV_B (extra environment, e.g. "TOKIO_WORKER_THREADS=2"), AB_STORE_A /
# AB_STORE_B (the lines of each config's [store] table; default path = "memory"), AB_AUTH
# (the lines of the upstream's auth table for both; default the static token; see
# bench/fleet.sh), AB_ORIGIN (http; https: nginx serves TLS 1.3 with h2 and http/1.1 offered,
# a certificate for origin.example from a test CA, and both configs use ca_file),
# AB_ORIGIN_REQUESTS (requests per origin connection before it closes it, 1000000; nginx's own
# default is 1000, which a vendor behind nginx has). Both proxies run
# with TOKIO_WORKER_THREADS=1 and, like bench/run.sh, servers on CPU 0 and wrk on CPU 1.
# Needs nginx, wrk, taskset (bench/run.sh installs them). Loopback only; every run bounded.
set -euo pipefail

A=${1:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
B=${2:?usage: bench/ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${AB_ROUNDS:-5}
SECONDS_PER_RUN=${AB_SECONDS:-5}
CONNS=${AB_CONNS:-16}
URL_PATH=${AB_PATH:-/small}
ORIGIN=${AB_ORIGIN:-http}
case $ORIGIN in http | https) ;; *) echo "AB_ORIGIN must be http or https" >&2; exit 2 ;; esac
BENCH=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/common.sh
. "$BENCH/common.sh"   # the token, bodies, origin config and CA; its cleanup is replaced below

TMP=$(mktemp -d /tmp/tokenproxy-ab.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then echo "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# shellcheck disable=SC2207
PORTS=($(python3 "$BENCH/lib.py" ports 3))
P_ORIGIN=${PORTS[0]} P_A=${PORTS[1]} P_B=${PORTS[2]}
chmod 755 "$TMP"
make_token
make_bodies
if [ "$ORIGIN" = https ]; then
  make_vendor_ca
  LISTEN="$P_ORIGIN ssl http2; ssl_protocols TLSv1.3; ssl_certificate $TMP/origin.pem; ssl_certificate_key $TMP/origin.key"
  UPSTREAM="target = \"https://origin.example:$P_ORIGIN/\"
address = \"127.0.0.1\"
ca_file = \"$CA\""
else
  LISTEN=$P_ORIGIN
  UPSTREAM="target = \"http://127.0.0.1:$P_ORIGIN/\""
fi
{ ngx_common origin; printf '  server { listen 127.0.0.1:%s; keepalive_requests %s; root %s/www; }\n}\n' \
  "$LISTEN" "${AB_ORIGIN_REQUESTS:-1000000}" "$TMP"; } >"$TMP/origin.conf"
AUTH=${AB_AUTH:-"kind = \"static\"
token = \"$TOKEN\""}
config() {   # PORT STORE_LINES
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
[store]
$2
[upstreams.o]
$UPSTREAM
[upstreams.o.auth]
$AUTH
headers = { Organization = "acme" }
EOF
}
config "$P_A" "${AB_STORE_A:-path = \"memory\"}" >"$TMP/a.toml"
config "$P_B" "${AB_STORE_B:-path = \"memory\"}" >"$TMP/b.toml"

SRV=(taskset -c 0); CLI=(taskset -c 1)
"${SRV[@]}" nginx -c "$TMP/origin.conf" -p "$TMP" 2>/dev/null & PIDS+=($!)
# shellcheck disable=SC2086
env TOKIO_WORKER_THREADS=1 ${AB_ENV_A:-} "${SRV[@]}" "$A" run --config "$TMP/a.toml" >"$TMP/a.log" 2>&1 & PID_A=$!; PIDS+=($PID_A)
# shellcheck disable=SC2086
env TOKIO_WORKER_THREADS=1 ${AB_ENV_B:-} "${SRV[@]}" "$B" run --config "$TMP/b.toml" >"$TMP/b.log" 2>&1 & PID_B=$!; PIDS+=($PID_B)
for port in "$P_ORIGIN" "$P_A" "$P_B"; do
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/o$URL_PATH" 2>/dev/null && break; curl -fsk -o /dev/null "$ORIGIN://127.0.0.1:$port$URL_PATH" 2>/dev/null && break; sleep 0.05; done
done
curl -fs -o /dev/null "http://127.0.0.1:$P_A/o$URL_PATH" || { cat "$TMP/a.log"; exit 1; }
curl -fs -o /dev/null "http://127.0.0.1:$P_B/o$URL_PATH" || { cat "$TMP/b.log"; exit 1; }

TCK=$(getconf CLK_TCK)
measure() {   # NAME PID PORT -> "req/s user_us sys_us"
  local pid=$2 port=$3 u0 s0 u1 s1 out
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(timeout $((SECONDS_PER_RUN + 10)) "${CLI[@]}" wrk --latency -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/o$URL_PATH")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  python3 - "$out" "$u0" "$s0" "$u1" "$s1" "$TCK" "$SECONDS_PER_RUN" <<'PY'
import re, sys
out, u0, s0, u1, s1, tck, secs = sys.argv[1], *map(float, sys.argv[2:])
requests = int(re.search(r"(\d+) requests in", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)] if p99 else float("nan")
print(f"{requests / secs:.0f} {(u1 - u0) / tck / requests * 1e6:.2f} {(s1 - s0) / tck / requests * 1e6:.2f} {errors.group(1) if errors else 0} {p99_ms:.3f}")
PY
}

store_line() { [ -z "$1" ] || echo "[store] ${1//$'\n'/; }" | sed 's/encryption_key = "[^"]*"/encryption_key = (redacted)/'; }
echo "A = $A ${AB_ENV_A:-} $(store_line "${AB_STORE_A:-}")"
echo "B = $B ${AB_ENV_B:-} $(store_line "${AB_STORE_B:-}")"
echo "origin $ORIGIN (closes a connection after ${AB_ORIGIN_REQUESTS:-1000000} requests), path $URL_PATH, $CONNS connections, $SECONDS_PER_RUN s per run, $ROUNDS rounds, alternating"
printf '%-6s %-3s %10s %10s %10s %8s %8s\n' round bin "req/s" "user µs" "sys µs" non2xx "p99 ms"
: >"$TMP/results"
for round in $(seq "$ROUNDS"); do
  # Alternate which goes first, so neither always runs on a warmer machine.
  if (( round % 2 )); then order=(A B); else order=(B A); fi
  for which in "${order[@]}"; do
    if [ "$which" = A ]; then line=$(measure A "$PID_A" "$P_A"); else line=$(measure B "$PID_B" "$P_B"); fi
    echo "$which $line" >>"$TMP/results"
    # shellcheck disable=SC2086
    printf '%-6s %-3s %10s %10s %10s %8s %8s\n' "$round" "$which" $line
  done
done
echo "RSS after the runs: A $(awk '/VmRSS/ {print $2, $3}' "/proc/$PID_A/status"), B $(awk '/VmRSS/ {print $2, $3}' "/proc/$PID_B/status")"
python3 - "$TMP/results" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {}
for which in "AB":
    mine = [r for r in rows if r[0] == which]
    med[which] = [statistics.median(float(r[i]) for r in mine) for i in (1, 2, 3, 5)]
    print(f"median {which}: {med[which][0]:.0f} req/s, {med[which][1]:.2f} µs user + {med[which][2]:.2f} µs sys per request, p99 {med[which][3]:.2f} ms")
print(f"B/A req/s: {med['B'][0] / med['A'][0]:.3f}; CPU per request B/A: {(med['B'][1] + med['B'][2]) / (med['A'][1] + med['A'][2]):.3f}")
PY
