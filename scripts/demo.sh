#!/usr/bin/env bash
# The end-to-end demonstration behind `make demo`.
set -euo pipefail
build=${1:-build}
echo "== Vulkan devices"
"$build"/bin/lathe-devices
