#!/usr/bin/env bash
# Runs every cargo-fuzz target of tokenproxy for a bounded time, on a fresh machine that has
# only the stable Rust toolchain. Each target starts from its committed corpus
# (fuzz/corpus/<target>/), copied to a temporary directory so a run never adds files to the
# repository. Exits non-zero if any target crashes (a panic, a failed property, a sanitizer
# report, a timeout); the crashing input is kept under fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh                     # 60 s per target
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh    # longer
#   FUZZ_TARGETS=routing bash scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_TARGETS="${FUZZ_TARGETS:-config routing framing}"
# The build (about 5 minutes from nothing on 2 cores) and each run are bounded too.
FUZZ_BUILD_TIMEOUT="${FUZZ_BUILD_TIMEOUT:-1800}"
CARGO_FUZZ_VERSION=0.13.2

export CARGO_TERM_COLOR=never
export RUST_BACKTRACE=1
# cargo-fuzz builds with AddressSanitizer by passing `-Zsanitizer=address`, which only a
# nightly rustc accepts; RUSTC_BOOTSTRAP=1 lets the stable one accept it (the sanitizer
# runtimes ship with the stable x86_64-linux standard library). Nothing else needs nightly.
export RUSTC_BOOTSTRAP=1

# cargo-fuzz: the one on PATH if it is this version, else installed into the project's own
# .tools/ (git-ignored), not into ~/.cargo/bin.
TOOLS="$PWD/.tools"
export PATH="$TOOLS/bin:$PATH"
if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    timeout 1200 cargo install --root "$TOOLS" cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
echo "== $(cargo fuzz --version)"

# The fuzz crate's lock file is committed; like every other build, this one uses it as it
# is, and says so instead of rewriting it.
if ! cargo fetch --locked --manifest-path fuzz/Cargo.toml --quiet; then
    echo "fuzz.sh: fuzz/Cargo.lock is out of date with Cargo.toml (a dependency changed):" >&2
    echo "  cargo fetch --manifest-path fuzz/Cargo.toml && git add fuzz/Cargo.lock" >&2
    exit 2
fi

echo "== build fuzz targets: $FUZZ_TARGETS"
if [ "$FUZZ_TARGETS" = "config routing framing" ]; then
    timeout "$FUZZ_BUILD_TIMEOUT" cargo fuzz build
else
    for target in $FUZZ_TARGETS; do
        timeout "$FUZZ_BUILD_TIMEOUT" cargo fuzz build "$target"
    done
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

max_len_of() {
    case "$1" in
        config) echo 8192 ;;
        framing) echo 4096 ;;
        *) echo 1024 ;;
    esac
}

failed=()
summary=()
for target in $FUZZ_TARGETS; do
    corpus="$work/corpus-$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    cp -R "fuzz/corpus/$target/." "$corpus/"
    seeds="$(find "$corpus" -type f | wc -l)"
    log="$work/$target.log"
    echo "== fuzz $target for ${FUZZ_SECONDS}s from $seeds seeds"
    status=0
    # -timeout: one input taking 10 s is a hang and fails the run. The outer timeout is a
    # backstop in case libFuzzer itself does not stop.
    timeout -k 30 "$((FUZZ_SECONDS + 300))" \
        cargo fuzz run "$target" "$corpus" -- \
        -max_total_time="$FUZZ_SECONDS" \
        -timeout=10 \
        -max_len="$(max_len_of "$target")" \
        -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    grown="$(find "$corpus" -type f | wc -l)"
    if [ "$status" -ne 0 ]; then
        echo "!! $target failed (exit $status):"
        grep -m 1 -A 1 'panicked at' "$log" || true
        grep -E '^(SUMMARY|artifact_prefix|Base64|==[0-9]+==ERROR)' "$log" || tail -n 40 "$log"
        failed+=("$target")
        summary+=("$target: FAILED after ${runs:-?} runs (exit $status); see fuzz/artifacts/$target/")
    else
        grep -E '^Done [0-9]+ runs' "$log" || true
        summary+=("$target: ok, ${runs:-?} runs in ${FUZZ_SECONDS}s, corpus $seeds -> $grown inputs")
    fi
done

echo "== summary"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzzing found a crash in: ${failed[*]}"
    exit 1
fi
