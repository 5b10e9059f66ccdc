#!/bin/sh
# virtio-pager device benchmark: requests/s and per-request latency through
# the device (in-memory pager, no guest) next to the raw pager call and a
# memcpy of the same bytes, measured in the same run. Uses cargo's own
# target dir (or $CARGO_TARGET_DIR if the caller set one).
set -eu
cd "$(dirname "$0")/.."
exec cargo bench -p devices --bench device "$@"
