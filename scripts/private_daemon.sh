# Sourced by the scripts that run jobs through a lathed of their own (demo.sh, *_figures.sh): private_daemon WORK
# makes WORK afresh with the runtime, data and shader-cache folders, points lathe at them (so a daemon the user
# runs is never touched) and stops the daemon when the script exits. `lathe` runs $bin/lathe.
lathe() { "$bin/lathe" "$@"; }

private_daemon() {
  local work=$1
  rm -rf "$work"
  mkdir -p "$work/run" "$work/data" "$work/cache"
  chmod 700 "$work/run"
  export XDG_RUNTIME_DIR="$work/run" XDG_DATA_HOME="$work/data" XDG_STATE_HOME="$work/state" LATHE_CACHE_DIR="$work/cache"
  trap 'lathe daemon stop >/dev/null 2>&1 || true' EXIT
}
