#!/bin/sh
# virtio-pager device benchmark: requests/s and per-request latency through
# the device (in-memory pager, no guest) next to the raw pager call and a
# memcpy of the same bytes, measured in the same run.
set -eu
cd "$(dirname "$0")/.."
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-devices}" exec cargo bench -p devices --bench device "$@"
