#!/usr/bin/env bash
# Runs the Postman collection (examples/postman/) with newman against `tokenproxy demo`: every
# request goes through the proxy with no auth settings of its own and must reach its simulated
# vendor authorized. Exits with newman's status.
#
#   bash scripts/postman.sh                                   # builds target/release/tokenproxy
#   TOKENPROXY_BIN=target/debug/tokenproxy bash scripts/postman.sh   # use a binary already built
#
# newman is installed into examples/postman/.newman (git-ignored) on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

NEWMAN_VERSION=6.2.2
NEWMAN_PREFIX=examples/postman/.newman
NEWMAN="$NEWMAN_PREFIX/node_modules/.bin/newman"
COLLECTION=examples/postman/tokenproxy.postman_collection.json
ENVIRONMENT=examples/postman/tokenproxy.postman_environment.json

if [ ! -x "$NEWMAN" ] || [ "$("$NEWMAN" --version)" != "$NEWMAN_VERSION" ]; then
    echo "== installing newman $NEWMAN_VERSION into $NEWMAN_PREFIX"
    npm install --prefix "$NEWMAN_PREFIX" "newman@$NEWMAN_VERSION" \
        --no-audit --no-fund --no-save --loglevel=error
fi

if [ -n "${TOKENPROXY_BIN:-}" ]; then
    BIN="$TOKENPROXY_BIN"
else
    echo "== building tokenproxy (release)"
    cargo build --release --locked --quiet
    BIN=target/release/tokenproxy
fi
[ -x "$BIN" ] || { echo "postman.sh: no executable at $BIN" >&2; exit 1; }

# A free loopback port: bind port 0, read the port, release it.
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="http://127.0.0.1:$PORT"
LOG="$(mktemp "${TMPDIR:-/tmp}/tokenproxy-demo.XXXXXX")"

echo "== tokenproxy demo on $BASE (log: $LOG)"
"$BIN" demo --listen "127.0.0.1:$PORT" >"$LOG" 2>&1 &
DEMO_PID=$!
stop_demo() {
    if kill -0 "$DEMO_PID" 2>/dev/null; then
        kill -TERM "$DEMO_PID" 2>/dev/null || true
        wait "$DEMO_PID" 2>/dev/null || true
    fi
}
trap stop_demo EXIT

# Ready once every upstream has a token (the BigAnimal device login takes about 2 s).
ready=""
for _ in $(seq 1 60); do
    if ! kill -0 "$DEMO_PID" 2>/dev/null; then
        echo "postman.sh: tokenproxy demo exited early:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/-/ready")" = 200 ]; then
        ready=yes
        break
    fi
    sleep 0.5
done
if [ -z "$ready" ]; then
    echo "postman.sh: $BASE/-/ready not 200 within 30 s; demo log:" >&2
    cat "$LOG" >&2
    exit 1
fi

echo "== newman run $COLLECTION"
status=0
"$NEWMAN" run "$COLLECTION" \
    --environment "$ENVIRONMENT" \
    --env-var "baseUrl=$BASE" \
    --color off \
    --disable-unicode || status=$?
if [ "$status" != 0 ]; then
    echo "postman.sh: newman failed ($status); demo log:" >&2
    cat "$LOG" >&2
fi
rm -f "$LOG"
exit "$status"
