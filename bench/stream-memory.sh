#!/usr/bin/env bash
# Memory while large bodies stream through tokenproxy: bodies must never be buffered, so
# RSS stays flat whatever the body size. Starts `tokenproxy demo` (release build) on a free
# loopback port, pushes a 1 GiB upload and a 1 GiB download through it with curl, and
# prints the process's RSS at idle and its peak during each transfer.
# Usage: bash bench/stream-memory.sh [SIZE_MIB]   (default 1024)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
bytes=$((size_mib * 1024 * 1024))

cargo build --release --locked --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/tokenproxy demo --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && break; sleep 0.1; done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }

# Samples RSS every 50 ms while a command runs; prints the peak in KiB.
peak_while() {
  local peak=0 sample
  "$@" &
  local job=$!
  while kill -0 "$job" 2>/dev/null; do
    sample=$(rss_kib); [ "$sample" -gt "$peak" ] && peak=$sample
    sleep 0.05
  done
  wait "$job"
  echo "$peak"
}

upload() { head -c "$bytes" /dev/zero | curl -sf --max-time 300 -T - -o /dev/null "http://127.0.0.1:$port/echo/upload"; }
download() { curl -sf --max-time 300 -H "x-echo-download: $bytes" -o /dev/null "http://127.0.0.1:$port/echo/download"; }

idle=$(rss_kib)
start=$(date +%s.%N); up=$(peak_while upload); up_s=$(echo "$(date +%s.%N) - $start" | bc)
start=$(date +%s.%N); down=$(peak_while download); down_s=$(echo "$(date +%s.%N) - $start" | bc)
printf 'body %d MiB through tokenproxy demo (proxy + simulators in one process)\n' "$size_mib"
printf '  RSS idle:                 %6d KiB\n' "$idle"
printf '  RSS peak during upload:   %6d KiB  (%.1f s)\n' "$up" "$up_s"
printf '  RSS peak during download: %6d KiB  (%.1f s)\n' "$down" "$down_s"
