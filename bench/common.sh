# Shell helpers for bench/run.sh and bench/https.sh (sourced, after `set -euo pipefail` and
# with BENCH set to the bench/ directory). Everything runs on 127.0.0.1 in a temp dir; every
# process started here is recorded by PID and stopped by PID; a trap stops them on exit.

say() { printf '%s\n' "$*"; }
die() { printf 'bench: %s\n' "$*" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"

# need COMMAND[:PACKAGE]...: installs the Debian packages of the missing commands with apt.
need() {
  local missing=() spec apt
  for spec in "$@"; do command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null; then apt=(sudo apt-get)
  else die "missing ${missing[*]}: run as root or install them (apt-get install -y ${missing[*]})"; fi
  "${apt[@]}" install -y "${missing[@]}" >/dev/null 2>&1 \
    || { "${apt[@]}" update >/dev/null && "${apt[@]}" install -y "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

# need_mitmproxy: mitmproxy from PyPI in bench/.venv (git-ignored), never system-wide.
MITMDUMP=$BENCH/.venv/bin/mitmdump
need_mitmproxy() {
  [ -x "$MITMDUMP" ] && return 0
  python3 -c 'import ensurepip, venv' 2>/dev/null || need python3-venv:python3-venv
  say "installing: mitmproxy from PyPI into bench/.venv"
  { python3 -m venv "$BENCH/.venv" && "$BENCH/.venv/bin/pip" install -q "${BENCH_MITMPROXY:-mitmproxy}"; } \
    >"${TMPDIR:-/tmp}/bench-mitmproxy-install.log" 2>&1 \
    || { cat "${TMPDIR:-/tmp}/bench-mitmproxy-install.log" >&2; die "pip install mitmproxy failed"; }
}

# bench_tmp PREFIX: the temp dir ($TMP) and the trap that stops every recorded PID.
bench_tmp() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$TMP"   # nginx workers may run as another user and must read the origin's files
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 40); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.05
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then say "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}

# tokenproxy_binary: $TMP/tokenproxy, a copy of TOKENPROXY_BIN or of a fresh release build, so a
# rebuild during the run changes nothing.
tokenproxy_binary() {
  if [ -n "${TOKENPROXY_BIN:-}" ]; then
    cp "$TOKENPROXY_BIN" "$TMP/tokenproxy"
  else
    command -v cargo >/dev/null || die "cargo not found (a Rust toolchain is needed, or TOKENPROXY_BIN)"
    say "building: cargo build --release --locked"
    cargo build --release --locked --quiet
    cp target/release/tokenproxy "$TMP/tokenproxy"
  fi
  TP=$TMP/tokenproxy
}

# pinning: servers on BENCH_SERVER_CPU, the client on BENCH_CLIENT_CPU (SRV and CLI prefixes).
pinning() {
  if [ "${BENCH_PIN:-1}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    SRV=(taskset -c "${BENCH_SERVER_CPU:-0}"); CLI=(taskset -c "${BENCH_CLIENT_CPU:-1}")
    PINNING="servers on CPU ${BENCH_SERVER_CPU:-0}, wrk and curl on CPU ${BENCH_CLIENT_CPU:-1} (taskset)"
  else
    SRV=(); CLI=()
    PINNING="none (BENCH_PIN=0, no taskset or a single CPU)"
  fi
}

# start NAME CMD... : runs CMD in the background (stdout and stderr to $TMP/NAME.log), records its PID.
start() {
  local name=$1; shift
  "$@" >"$TMP/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}
# stop PID: TERM, then KILL after 2 s.
stop() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 40); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# wait_http NAME PID URL: until URL answers 200 (10 s at most) or the process dies.
wait_http() {
  for _ in $(seq 200); do
    curl -sf -o /dev/null --max-time 1 "$3" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$TMP/$1.log" >&2; die "$1 exited at start (log above)"; }
    sleep 0.05
  done
  cat "$TMP/$1.log" >&2; die "$1 did not answer 200 at $3 within 10 s"
}
# family PID: PID and its children (nginx: master + worker).
family() { echo "$1" $(ps -o pid= --ppid "$1" 2>/dev/null); }
# family_sum PID FILE AWK: what AWK prints for /proc/P/FILE, summed over PID and its children.
family_sum() {
  local total=0 p v
  for p in $(family "$1"); do
    v=$(awk "$3" "/proc/$p/$2" 2>/dev/null || true)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# rss_kib PID: VmRSS in KiB; cpu_ticks PID: user + system clock ticks (all threads).
rss_kib() { family_sum "$1" status '/^VmRSS:/ {print $2}'; }
cpu_ticks() { family_sum "$1" stat '{print $14 + $15}'; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
put() { python3 "$BENCH/lib.py" put "$TMP/meta.json" "$1" "$2"; }

# origin_counts: "accepted-connections requests" from the origin's stub_status at ORIGIN_STATUS_URL.
origin_counts() { curl -sf --max-time 2 "$ORIGIN_STATUS_URL" | awk 'NR == 3 {print $1, $3}'; }

RUN=0
# load SECTION TARGET URL CONNS BODY PID [KEY=VALUE...]: one bounded wrk run, recorded in
# $TMP/load.jsonl with the RSS of PID's processes (sampled every 250 ms), their CPU time, and,
# with ORIGIN_STATUS_URL set, the connections the origin accepted meanwhile (the status
# request of the second reading is one of them and is taken off).
load() {
  local section=$1 target=$2 url=$3 conns=$4 body=$5 pid=$6; shift 6
  RUN=$((RUN + 1))
  local out=$TMP/wrk-$RUN-$target-$body-$conns.txt last=0 peak=0 s count0=0 cpu0 origin0=""
  [ -n "${COUNT_URL:-}" ] && count0=$(curl -sf "$COUNT_URL")
  [ -n "${ORIGIN_STATUS_URL:-}" ] && origin0=$(origin_counts)
  cpu0=$(cpu_ticks "$pid")
  "${CLI[@]}" timeout $((BENCH_SECONDS + 30)) \
    wrk -t1 -c"$conns" -d"${BENCH_SECONDS}s" --timeout 5s --latency "$url" >"$out" 2>&1 &
  local wrk_pid=$!
  PIDS+=("$wrk_pid")
  while kill -0 "$wrk_pid" 2>/dev/null; do
    s=$(rss_kib "$pid"); last=$s; [ "$s" -gt "$peak" ] && peak=$s
    sleep 0.25
  done
  wait "$wrk_pid" || { cat "$out" >&2; die "wrk failed against $target ($url)"; }
  set -- "$@" cpu_s="$(python3 -c 'import sys; print((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]))' \
    "$cpu0" "$(cpu_ticks "$pid")" "$(getconf CLK_TCK)")"
  if [ -n "$origin0" ]; then
    local origin1
    origin1=$(origin_counts)
    set -- "$@" origin_conns=$(( ${origin1% *} - ${origin0% *} - 1 )) origin_requests=$(( ${origin1#* } - ${origin0#* } - 1 ))
  fi
  [ -n "${COUNT_URL:-}" ] && set -- "$@" token_requests=$(($(curl -sf "$COUNT_URL") - count0))
  python3 "$BENCH/lib.py" record "$TMP/load.jsonl" section="$section" target="$target" \
    conns="$conns" body="$body" rss_kib="$last" rss_peak_kib="$peak" seconds="$BENCH_SECONDS" \
    "$@" wrk="$out"
}

# The 800-byte token and the origin's bodies: /small (100 B) and /large (64 KiB) under $TMP/www.
make_token() {
  TOKEN=$(python3 -c 'import secrets,string; a=string.ascii_letters+string.digits; print("".join(secrets.choice(a) for _ in range(800)))')
  printf '%s' "$TOKEN" >"$TMP/token"; chmod 600 "$TMP/token"
}
make_bodies() {
  mkdir -p "$TMP/www" "$TMP/ngx"
  chmod 1777 "$TMP/ngx"
  python3 -c 'import sys; sys.stdout.write(("tokenproxy-bench " * 8)[:99] + "\n")' >"$TMP/www/small"
  head -c 65536 /dev/zero | tr '\0' 'x' >"$TMP/www/large"
  chmod 644 "$TMP/www/"*; chmod 755 "$TMP/www"
}

# make_vendor_ca: the vendor's test CA ($CA = $TMP/ca.pem) and the origin's certificate for
# origin.example signed by it ($TMP/origin.pem, $TMP/origin.key), P-256, valid 2 days.
make_vendor_ca() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench vendor CA" \
    -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=origin.example" \
    -keyout "$TMP/origin.key" -out "$TMP/origin.csr" 2>/dev/null
  printf 'subjectAltName=DNS:origin.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$TMP/san.ext"
  openssl x509 -req -in "$TMP/origin.csr" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 2 -extfile "$TMP/san.ext" -out "$TMP/origin.pem" 2>/dev/null
  chmod 644 "$TMP"/*.pem "$TMP"/*.key
  CA=$TMP/ca.pem
}

# ngx_common NAME: the head of an nginx config (one worker, no access log, keep-alive), up to
# the open `http {`.
ngx_common() {
  local name=$1
  cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/$name.pid;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 120s;
  keepalive_requests 1000000;
  client_body_temp_path $TMP/ngx/$name-body;
  proxy_temp_path $TMP/ngx/$name-proxy;
  fastcgi_temp_path $TMP/ngx/$name-fastcgi;
  uwsgi_temp_path $TMP/ngx/$name-uwsgi;
  scgi_temp_path $TMP/ngx/$name-scgi;
EOF
}

# check_targets: every target of TARGETS at BASE[t] serves the origin's exact bytes, and every
# proxy delivers exactly the two headers (the origin's /check echoes them).
check_targets() {
  local t
  for t in "${TARGETS[@]}"; do
    cmp -s <(curl -sfk "${BASE[$t]}/small") "$TMP/www/small" || die "$t: /small differs from the origin's"
    cmp -s <(curl -sfk "${BASE[$t]}/large") "$TMP/www/large" || die "$t: /large differs from the origin's"
    [ "$t" = direct ] && continue
    [ "$(curl -sf "${BASE[$t]}/check")" = "Bearer $TOKEN|acme" ] || die "$t does not inject Authorization and Organization as expected"
    [ -n "${AFTER_CHECK:-}" ] && "$AFTER_CHECK" "$t"
  done
  return 0
}

# rounds SECTION BODIES CONNS: every cell, BENCH_ROUNDS rounds, targets in rotating order.
rounds() {
  local section=$1 body conns round i t
  for body in $2; do
    for conns in $3; do
      say ""
      say "load: $body body, $conns connections"
      for ((round = 0; round < BENCH_ROUNDS; round++)); do
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do
          t=${TARGETS[$(((i + round) % ${#TARGETS[@]}))]}
          load "$section" "$t" "${BASE[$t]}/$body" "$conns" "$body" "${PIDOF[$t]}" round="$round"
        done
      done
    done
  done
}

# versions: one line naming the peers' versions.
versions() {
  local v_caddy v_mitm
  v_caddy=$(caddy version 2>/dev/null | awk '{print $1}')
  v_mitm=$("$MITMDUMP" --version 2>/dev/null | awk '/^Mitmproxy:/ {print $2}')
  printf 'nginx %s, haproxy %s, caddy %s, mitmproxy %s, wrk %s' \
    "$(nginx -v 2>&1 | sed 's/.*nginx\///')" "$(haproxy -v | awk 'NR==1 {print $3}')" \
    "${v_caddy:-?}" "${v_mitm:-?}" "$({ wrk -v 2>&1 || true; } | awk 'NR==1 {print $2}')"
}

# tp_config PORT TARGET [UPSTREAM_LINE...]: tokenproxy on PORT with upstream `o` (prefix /o)
# of kind "static", the same token, headers = { Organization = "acme" }, [store] in memory.
tp_config() {
  local port=$1 target=$2; shift 2
  printf '[server]\nlisten = "127.0.0.1:%s"\n\n[store]\npath = "memory"\n\n' "$port"
  printf '[upstreams.o]\ntarget = "%s"\n' "$target"
  [ $# -gt 0 ] && printf '%s\n' "$@"
  printf '\n[upstreams.o.auth]\nkind = "static"\ntoken = "%s"\nheaders = { Organization = "acme" }\n' "$TOKEN"
}

# haproxy_cfg PORT SERVER_LINE [HTTP_REQUEST_RULE...]: HAProxy as the proxy on PORT: one
# thread, keep-alive both sides, http-reuse always, /o stripped, the two headers set.
haproxy_cfg() {
  local port=$1 server=$2 rule; shift 2
  cat <<EOF
global
  nbthread 1
  maxconn 4096

defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  http-reuse always

frontend fe
  bind 127.0.0.1:$port
  default_backend origin

backend origin
  http-request replace-path ^/o(/.*) \1
EOF
  for rule in "$@"; do printf '  http-request %s\n' "$rule"; done
  printf '  http-request set-header Authorization "Bearer %s"\n  http-request set-header Organization acme\n' "$TOKEN"
  printf '  server origin %s\n' "$server"
}

# caddyfile PORT UPSTREAM [TRANSPORT_LINE...]: Caddy as the proxy on PORT: /o/* with /o
# stripped (handle_path), the two headers set by header_up (and Host to CADDY_HOST if set),
# upstream keep-alive with room for every connection (the default keeps 32 idle per host).
caddyfile() {
  local port=$1 upstream=$2 line; shift 2
  printf '{\n\tadmin off\n\tauto_https off\n}\n'
  printf 'http://127.0.0.1:%s {\n\thandle_path /o/* {\n\t\treverse_proxy %s {\n' "$port" "$upstream"
  [ -n "${CADDY_HOST:-}" ] && printf '\t\t\theader_up Host %s\n' "$CADDY_HOST"
  printf '\t\t\theader_up Authorization "Bearer %s"\n\t\t\theader_up Organization acme\n' "$TOKEN"
  printf '\t\t\ttransport http {\n\t\t\t\tkeepalive 120s\n\t\t\t\tkeepalive_idle_conns 1024\n'
  printf '\t\t\t\tkeepalive_idle_conns_per_host 1024\n'
  for line in "$@"; do printf '\t\t\t\t%s\n' "$line"; done
  printf '\t\t\t}\n\t\t}\n\t}\n}\n'
}
# start_caddy CADDYFILE: Caddy with one Go thread running code (GOMAXPROCS=1), its state in $TMP.
start_caddy() {
  caddy validate --adapter caddyfile --config "$1" >"$TMP/caddy-validate.log" 2>&1 \
    || { cat "$TMP/caddy-validate.log" >&2; die "caddy rejects its config"; }
  start caddy "${SRV[@]}" env HOME="$TMP" XDG_DATA_HOME="$TMP/caddy" XDG_CONFIG_HOME="$TMP/caddy" \
    GOMAXPROCS=1 caddy run --adapter caddyfile --config "$1"
}
# start_mitmproxy PORT UPSTREAM_URL [--set OPTION=VALUE...]: mitmdump in reverse mode with
# bench/mitm_inject.py setting the two headers (and the upstream's SNI and Host to MITM_HOST if set).
start_mitmproxy() {
  local port=$1 upstream=$2; shift 2
  start mitmproxy "${SRV[@]}" env BENCH_TOKEN_FILE="$TMP/token" BENCH_UPSTREAM_HOST="${MITM_HOST:-}" \
    "$MITMDUMP" -q --listen-host 127.0.0.1 --listen-port "$port" --mode "reverse:$upstream" \
    -s "$BENCH/mitm_inject.py" --set confdir="$TMP/mitmproxy" --set termlog_verbosity=error \
    --set flow_detail=0 "$@"
}

# tp_rev: what tokenproxy binary is measured: TOKENPROXY_REV if set; else with TOKENPROXY_BIN
# its path and HEAD; else HEAD (+dirty when src/ or Cargo files differ from it).
tp_rev() {
  local head
  head=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "${TOKENPROXY_REV:-}" ]; then echo "$TOKENPROXY_REV"
  elif [ -n "${TOKENPROXY_BIN:-}" ]; then echo "$TOKENPROXY_BIN (HEAD $head)"
  else echo "$head$(git diff --quiet -- src Cargo.toml Cargo.lock 2>/dev/null || echo '+dirty')"; fi
}
