#!/usr/bin/env bash
# Runs every benchmark program (build/bin/bench_*) in turn; each prints one summary line per figure,
# as a ratio against a peer measured in the same run.
set -euo pipefail
build=${1:-build}
status=0
for b in "$build"/bin/bench_*; do
  [ -x "$b" ] || continue
  echo "== $(basename "$b")"
  "$b" || status=1
done
exit $status
