#!/usr/bin/env bash
# Pager backend benchmark: per backend (file, zero/anon, nbd, unix), 4 KiB
# and 64 KiB request latency (p50/p99) and sequential throughput, each next
# to the raw operation it wraps (pread, a raw NBD read, a raw protocol
# request), as pager/raw ratios. Needs qemu-nbd for the nbd rows.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p pager-backends --bench pagers "$@"
