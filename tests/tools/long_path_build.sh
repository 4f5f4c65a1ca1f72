#!/usr/bin/env bash
# A checkout in a long path builds. Copies the tree under a path of about 240 characters, configures the check
# build there (warnings as errors) and compiles every test and benchmark source, the files that compile the
# checkout's own paths into string constants (a fixed buffer that a long path overflows is a -Wformat-truncation
# error); then checks that a default configuration of the same tree does not make warnings errors at all.
# Usage: long_path_build.sh [JOBS]
set -euo pipefail
jobs=${1:-2}
root=$(cd "$(dirname "$0")/../.." && pwd)
base=$(mktemp -d /tmp/lathe-long-XXXXXX)
trap 'rm -rf "$base"' EXIT
deep="$base/$(printf 'p%.0s' {1..100})/$(printf 'q%.0s' {1..100})/lathe"
mkdir -p "$deep"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf -) | tar xf - -C "$deep"
echo "checkout at a path of ${#deep} characters"
cmake -S "$deep" -B "$deep/build" -DLATHE_WERROR=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
objs=$(make -C "$deep/build" help | awk '/^\.\.\. (tests|bench)\/.*\.o$/ {print $2}')
[ -n "$objs" ] || { echo "no test or benchmark sources found in the build"; exit 1; }
make -s -k -C "$deep/build" -j"$jobs" $objs >/dev/null
echo "$(echo "$objs" | wc -w) test and benchmark sources compile there with warnings as errors"
cmake -S "$deep" -B "$deep/build-default" >/dev/null
if grep -rl -- -Werror "$deep/build-default/CMakeFiles" --include=flags.make; then
  echo "the default build makes warnings errors (only the check build may)"
  exit 1
fi
echo "the default build leaves warnings as warnings"
