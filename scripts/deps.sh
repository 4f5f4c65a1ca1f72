#!/usr/bin/env bash
# Installs the Debian 12 packages Lathe needs to build, test and benchmark.
# As root it runs apt-get for whatever is missing; otherwise it prints the line to run.
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libvulkan-dev mesa-vulkan-drivers vulkan-validationlayers vulkan-tools
  glslc libshaderc-dev glslang-dev spirv-tools
  libzmq3-dev libmsgpack-dev libsqlite3-dev sqlite3 libcriterion-dev
  libjansson-dev libpcre2-dev libopenblas-dev clang-format git
  libsndfile1-dev libsamplerate0-dev espeak-ng
  python3 python3-zmq python3-msgpack
)
# espeak-ng speaks the held-out verses the speech demo's test and `make demo` transcribe (tests and tools only).
# Extra packages for tools/ (fixtures, the PyTorch reference, training the embedded models on the KJV text):
# opt in with LATHE_TOOLS_DEPS=1.
if [ "${LATHE_TOOLS_DEPS:-0}" = 1 ]; then pkgs+=(python3-numpy python3-torch bible-kjv bible-kjv-text); fi
# A one-node Slurm cluster for the Slurm executor's test (tests/slurm/test_slurm.sh): opt in with LATHE_SLURM_DEPS=1
# (.ci/run does).
if [ "${LATHE_SLURM_DEPS:-0}" = 1 ]; then pkgs+=(slurmctld slurmd slurm-client munge); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "lathe: missing Debian packages; run as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi
echo "lathe: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
