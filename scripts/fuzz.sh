#!/usr/bin/env bash
# Runs the fuzz targets for SECONDS each (default 60), one after the other,
# one process each (one core), and prints per target the executions and the
# crashes found. docs/fuzzing.md describes the targets.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 600 mmio
#
# Stable Rust is enough: cargo-fuzz (`cargo install cargo-fuzz`) builds the
# targets with libFuzzer's coverage instrumentation, which takes only stable
# -C flags, when no sanitizer is asked for (`--sanitizer none`; the default,
# AddressSanitizer, needs the nightly-only -Zsanitizer). Set
# FUZZ_SANITIZER=address to have one anyway: the script then sets
# RUSTC_BOOTSTRAP=1, which lets the stable compiler take -Z flags.
#
# New inputs go to <crate>/fuzz/target/work/<target> (not committed); the
# committed corpus <crate>/fuzz/corpus/<target> is read, never written. A
# crash stops its target and leaves the input in <crate>/fuzz/artifacts/
# <target>/: fix it, then copy the input into the committed corpus, where
# `cargo test --workspace` replays it.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[[ $# -gt 0 ]] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs == 0)); then
    echo "usage: $0 [SECONDS] [TARGET...]" >&2
    exit 2
fi

# crate directory : target
all=(
    devices:parse_request
    devices:mmio
    pager-backends:unix_client
    pager-backends:nbd_client
    pager-backends:nbd_tls_client
    vmm:load_kernel
)

selected=()
if [[ $# -eq 0 ]]; then
    selected=("${all[@]}")
else
    for want in "$@"; do
        found=
        for t in "${all[@]}"; do
            [[ ${t#*:} == "$want" ]] && selected+=("$t") && found=1
        done
        if [[ -z $found ]]; then
            echo "unknown target $want; targets: ${all[*]#*:}" >&2
            exit 2
        fi
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
    exit 1
fi

sanitizer=${FUZZ_SANITIZER:-none}
if [[ $sanitizer != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi

failed=0
summary=()
for entry in "${selected[@]}"; do
    crate=${entry%%:*}
    target=${entry#*:}
    dir=$root/$crate/fuzz
    work=$dir/target/work/$target
    artifacts=$dir/artifacts/$target
    log=$dir/target/logs/$target.log
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    echo "== $crate/$target: building" >&2
    (cd "$dir/.." && cargo fuzz build --sanitizer "$sanitizer" "$target") >&2
    marker=$(mktemp)
    echo "== $crate/$target: fuzzing for ${secs}s (log: $log)" >&2
    status=0
    # -timeout: one input running this long is a hang; -rss_limit_mb and
    # -malloc_limit_mb: growth without bound is a crash too.
    (cd "$dir/.." && cargo fuzz run --sanitizer "$sanitizer" "$target" \
        "$work" "$dir/corpus/$target" -- \
        -max_total_time="$secs" -timeout=60 \
        -rss_limit_mb=2048 -malloc_limit_mb=1024 \
        -print_final_stats=1 -artifact_prefix="$artifacts/") >"$log" 2>&1 ||
        status=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)
    crashes=$(find "$artifacts" -type f -newer "$marker" | wc -l)
    rm -f "$marker"
    line="$crate/$target: executions=${execs:-?} crashes=$crashes"
    if ((status != 0 || crashes > 0)); then
        failed=1
        line+=" (exit $status; inputs in $artifacts, see $log)"
    fi
    summary+=("$line")
    echo "$line"
done

echo
echo "summary (${secs}s per target):"
printf '  %s\n' "${summary[@]}"
exit $failed
