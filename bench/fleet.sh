#!/usr/bin/env bash
# The request path with a Redis fleet store against the file store: one binary in
# bench/ab.sh's alternating rounds, A with [store] path = FILE, B with [store] redis = a
# redis-server started here on a free loopback port. The upstream is client_credentials
# against bench/token_server.py with 1-hour tokens, so each proxy's token came through its
# store (B: the lease, the sealed entry in Redis) and no refresh falls in the runs.
#
#   bash bench/fleet.sh target/release/tokenproxy     # AB_ROUNDS, AB_SECONDS, ... as for ab.sh
#
# Needs redis-server (Debian's package) besides what bench/ab.sh needs. Stops what it
# started by PID on exit.
set -euo pipefail

BIN=${1:?usage: bench/fleet.sh TOKENPROXY_BINARY}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/tokenproxy-fleet-bench.XXXXXX)
read -r P_REDIS P_TOKEN < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
taskset -c 0 redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly yes --dir "$TMP" \
  --protected-mode yes --loglevel warning >"$TMP/redis.log" 2>&1 & REDIS_PID=$!
taskset -c 0 python3 "$HERE/token_server.py" "$P_TOKEN" 3600 & TOKEN_PID=$!
trap 'kill "$REDIS_PID" "$TOKEN_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do
  [ "$(redis-cli -p "$P_REDIS" PING 2>/dev/null)" = PONG ] && curl -fs -o /dev/null "http://127.0.0.1:$P_TOKEN/count" && break
  sleep 0.05
done
[ "$(redis-cli -p "$P_REDIS" PING)" = PONG ] || { cat "$TMP/redis.log"; exit 1; }

KEY=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')
AB_AUTH="kind = \"client_credentials\"
token_url = \"http://127.0.0.1:$P_TOKEN/token\"
client_id = \"bench\"
client_secret = \"bench-secret\"" \
AB_STORE_A="path = \"$TMP/tokens.json\"" \
AB_STORE_B="redis = \"redis://127.0.0.1:$P_REDIS/0\"
key_prefix = \"bench:\"
encryption_key = \"$KEY\"" \
  bash "$HERE/ab.sh" "$BIN" "$BIN"
echo "token requests: $(curl -fs "http://127.0.0.1:$P_TOKEN/count"); redis keys: $(redis-cli -p "$P_REDIS" --scan | sort | tr '\n' ' ')"
