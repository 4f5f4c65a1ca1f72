#!/usr/bin/env bash
# Runs the whole test suite three ways: plain build, with the Khronos validation layer (any validation error
# fails the test that caused it), and an AddressSanitizer + UndefinedBehaviorSanitizer build.
# Usage: check.sh [--plain-only] BUILD BUILD_ASAN JOBS
set -euo pipefail
plain_only=0
if [ "${1:-}" = --plain-only ]; then plain_only=1; shift; fi
build=${1:-build} build_asan=${2:-build-asan} jobs=${3:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The check build treats warnings as errors (a plain `make` does not: a newer compiler must not break it).
cmake -S . -B "$build" -DLATHE_WERROR=ON >/dev/null
cmake --build "$build" -j"$jobs"

export LATHE_TEST_CACHE_DIR="$root/$build/test-cache"
mkdir -p "$LATHE_TEST_CACHE_DIR"
start=$(date +%s)
status=0

run() { # name, then the command
  local name=$1; shift
  echo "== $name"
  if ! "$@"; then echo "== $name: FAILED"; status=1; fi
}

tests() { # build dir
  local dir=$1
  for t in "$dir"/bin/test_*; do
    [ -x "$t" ] || continue
    run "$(basename "$t") [$dir${LATHE_VALIDATION:+, validation}]" "$t" --jobs "$jobs"
  done
}

# The sources follow the checked-in .clang-format (make format applies it).
run "format (.clang-format)" bash -c 'git ls-files "*.c" "*.h" | xargs clang-format --dry-run -Werror'

tests "$build"
# A checkout in a long path builds (the check build's warnings as errors), and a default build never makes
# warnings errors.
run "long checkout path" bash tests/tools/long_path_build.sh "$jobs"
# make install into a staging folder gives programs that run and a unit that points at them.
run "install (DESTDIR)" bash -c "rm -rf '$build/stage' && DESTDIR='$root/$build/stage' cmake --install '$build' --prefix /usr >/dev/null && '$build/stage/usr/bin/lathe' --version && test -x '$build/stage/usr/bin/lathed' && test -x '$build/stage/usr/bin/lathe-worker' && grep -q 'ExecStart=/usr/bin/lathed' '$build/stage/usr/lib/systemd/user/lathed.service' && test -f '$build/stage/usr/share/doc/lathe/operations.md'"
# The Python client against a real daemon (Debian's python3-zmq and python3-msgpack, for /usr/bin/python3).
run "python client" /usr/bin/python3 tests/python/test_client.py "$build/bin"
# The Slurm executor against a one-node Slurm cluster started on this machine (when Slurm is installed: .ci/run
# installs it; the script says when it does not run).
run "slurm executor" timeout 600 bash tests/slurm/test_slurm.sh "$build/bin"
if [ $plain_only = 0 ]; then
  LATHE_VALIDATION=1 tests "$build"

  cmake -S . -B "$build_asan" -DCMAKE_BUILD_TYPE=Debug -DLATHE_SANITIZE=ON -DLATHE_BENCH=OFF -DLATHE_WERROR=ON >/dev/null
  cmake --build "$build_asan" -j"$jobs"
  # Leak checking is off: lavapipe is unloaded at vkDestroyInstance, so its process-lifetime allocations show up
  # as leaks from an "<unknown module>" that no suppression can name, and Criterion's forked tests would not fail
  # on them anyway. Memory errors and undefined behaviour abort the test.
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  LATHE_TEST_CACHE_DIR="$root/$build_asan/test-cache" tests "$build_asan"
  # The fuzz targets over their committed corpora plus a fixed number of seeded mutations (fuzz/replay.c); a
  # failing input is left in the build folder as fuzz-crash.bin.
  run "fuzz replay: file parsers [$build_asan]" bash -c "cd '$build_asan' && bin/fuzz_replay_files --keep-first-byte '$root/fuzz/corpus-files'"
  run "fuzz replay: protocol [$build_asan]" bash -c "cd '$build_asan' && bin/fuzz_replay_proto '$root/fuzz/corpus'"
fi
echo "== check finished in $(( $(date +%s) - start )) s"
if [ $status = 0 ]; then echo "check: all suites passed"; else echo "check: FAILED"; fi
exit $status
