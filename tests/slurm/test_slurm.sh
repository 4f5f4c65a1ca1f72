#!/usr/bin/env bash
# The Slurm executor against a real Slurm: a one-node cluster on this machine (Debian's slurmctld, slurmd and
# munge, started here on free ports in a folder of their own, stopped when the script ends), and a lathed of its own.
#   - a generate job submitted with --executor slurm runs as a Slurm batch job (sacct lists it), streams its events
#     and returns the same text as the same job run locally;
#   - `lathe ps` and `lathe devices` show a running Slurm job with its node; `lathe cancel` cancels the Slurm job;
#   - a scancel from outside, or a worker killed on its node, fails the Lathe job with Slurm's state and message;
#   - a CURVE key lathed did not issue cannot reach the Slurm workers' socket;
#   - lathed stopped while a Slurm job runs checkpoints it, and the job resumes under Slurm once lathed is back;
#     lathed killed outright cancels the orphaned Slurm job when it starts again;
#   - sbatch's refusal, misplaced options and a daemon without Slurm get clear errors.
# Usage: test_slurm.sh BUILD_BIN. Needs root (slurmd starts jobs as their user) and the packages; `make check` runs it
# when they are there, and `.ci/run` installs them. Every wait is bounded; the whole script takes about a minute.
set -euo pipefail
bin=$(cd "${1:?usage: test_slurm.sh BUILD_BIN}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)

for c in slurmctld slurmd munged sbatch squeue scancel sacct sinfo; do
  if ! command -v "$c" >/dev/null; then
    echo "slurm test: not run: $c is not installed (Debian's slurmctld slurmd slurm-client munge; .ci/run installs them)"
    exit 0
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "slurm test: not run: slurmd needs root to start jobs"
  exit 0
fi

work=$(mktemp -d /tmp/lathe-slurm.XXXXXX)
chmod 755 "$work"
fails=0
ok() { echo "  ok: $*"; }
bad() { echo "  FAILED: $*"; fails=$((fails + 1)); }
lathe() { "$bin/lathe" "$@"; }

cleanup() {
  set +e
  lathe daemon stop >/dev/null 2>&1
  [ -f "$work/slurmd.pid" ] && kill "$(cat "$work/slurmd.pid")" 2>/dev/null
  [ -f "$work/slurmctld.pid" ] && kill "$(cat "$work/slurmctld.pid")" 2>/dev/null
  [ -f "$work/munge/munged.pid" ] && kill "$(cat "$work/munge/munged.pid")" 2>/dev/null
  sleep 1
  pkill -9 -f "$work/slurm.conf" 2>/dev/null
  pkill -9 -f "lathe-worker --one-shot --connect" 2>/dev/null
  if [ $fails -ne 0 ]; then
    for f in "$work"/log/*.log "$work"/lathed.log; do echo "---- $f"; tail -n 30 "$f"; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Free TCP ports for slurmctld and slurmd.
read -r pctl pd < <(/usr/bin/python3 -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/log"
chmod 700 "$work/munge"
head -c 1024 /dev/urandom >"$work/munge/munge.key"
chmod 600 "$work/munge/munge.key"
munged -f --socket="$work/munge/munge.sock" --key-file="$work/munge/munge.key" --log-file="$work/log/munged.log" \
  --pid-file="$work/munge/munged.pid" --seed-file="$work/munge/seed"
node=$(hostname -s)
cat >"$work/slurm.conf" <<EOF
ClusterName=lathetest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$pctl
SlurmdPort=$pd
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$work/jobcomp.txt
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF="$work/slurm.conf"
slurmctld -i
slurmd
for _ in $(seq 60); do
  sinfo -h -o %T 2>/dev/null | grep -q idle && break
  sleep 0.5
done
sinfo -h -o %T | grep -q idle || { bad "the one-node cluster did not come up"; exit 1; }
echo "slurm test: a one-node cluster ($(sbatch --version)) on ports $pctl/$pd"

# A lathed of its own whose jobs go to Slurm by default; its workers connect back over loopback.
mkdir -p "$work/run" "$work/data" "$work/cache"
chmod 700 "$work/run"
export XDG_RUNTIME_DIR="$work/run" XDG_DATA_HOME="$work/data" LATHE_CACHE_DIR="$work/cache"
"$bin/lathed" --executor slurm --slurm-listen 'tcp://127.0.0.1:*' --slurm-host 127.0.0.1 --slurm-poll-ms 500 \
  >"$work/lathed.log" 2>&1 &
for _ in $(seq 50); do lathe --no-autostart daemon status >/dev/null 2>&1 && break; sleep 0.2; done

field() { # job, field of `lathe show --json`
  lathe --json show "$1" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin).get('$2') or '')"
}
wait_for() { # seconds, then a command that succeeds when the wait is over
  local t=$1
  shift
  for _ in $(seq $((t * 5))); do "$@" && return 0; sleep 0.2; done
  return 1
}
is_state() { [ "$(field "$1" state)" = "$2" ]; }

# 1. A real job under Slurm: the same greedy text as the same job run locally, events streamed, sacct lists it.
model="$root/tests/fixtures/stories260K/stories260K.gguf"
gen=(generate --model "$model" --prompt "Once upon a time" --max-tokens 24 --temperature 0)
# `lathe run` prints the job's output records on stdout and its events on stderr.
lathe run "${gen[@]}" >"$work/slurm.out" 2>"$work/slurm.events" || bad "generate under Slurm did not succeed"
lathe run "${gen[@]}" --executor local >"$work/local.out" 2>"$work/local.events" ||
  bad "generate run locally did not succeed"
if grep -q '"tokens":\[[0-9]' "$work/slurm.out" && cmp -s "$work/slurm.out" "$work/local.out"; then
  ok "generate under Slurm wrote the local run's output: $(head -c 160 "$work/slurm.out")"
else
  bad "generate under Slurm and locally differ: $(cat "$work/slurm.out") vs $(cat "$work/local.out")"
fi
sid=$(grep -o 'submitted to Slurm as job [0-9]*' "$work/slurm.events" | grep -o '[0-9]*$' || true)
if [ -n "$sid" ] && grep -q '"type":"progress"' "$work/slurm.events" &&
  grep -q "the worker of Slurm job $sid connected" "$work/slurm.events"; then
  ok "Slurm job $sid streamed its progress and log"
else
  bad "no Slurm job id or no streamed events in: $(head -c 600 "$work/slurm.events")"
fi
if wait_for 10 bash -c "sacct -c -n -P -j '$sid' -o JobID,State 2>/dev/null | grep -q '^$sid|COMPLETED'"; then
  ok "sacct lists Slurm job $sid COMPLETED"
else
  bad "sacct does not list Slurm job $sid as completed: $(sacct -c -n -P -j "$sid" -o JobID,State 2>&1)"
fi

# 2. A running Slurm job in ps and devices; `lathe cancel` cancels it in Slurm.
id=$(lathe submit sleep --steps 600 --delay-ms 100 | grep -o '[0-9]*' | head -1)
running() { [ "$(field "$1" slurm_state)" = RUNNING ] && [ -n "$(field "$1" node)" ]; }
if wait_for 30 running "$id"; then
  sid=$(field "$id" slurm_job)
  ps=$(lathe ps | awk -v id="$id" '$1 == id')
  if echo "$ps" | grep -qw "$node"; then ok "ps shows job $id on node $node: $ps"; else bad "ps: $ps"; fi
  dev=$(lathe devices | grep "Slurm job $sid" || true)
  if echo "$dev" | grep -q RUNNING; then ok "devices: $dev"; else bad "devices: $(lathe devices)"; fi
  lathe cancel "$id" >/dev/null
  if wait_for 20 is_state "$id" cancelled; then ok "job $id cancelled"; else bad "job $id is $(field "$id" state)"; fi
  if wait_for 20 bash -c "squeue -h --states=all -j '$sid' -o %T | grep -q CANCELLED"; then
    ok "lathe cancel cancelled Slurm job $sid"
  else
    bad "Slurm job $sid after lathe cancel: $(squeue -h --states=all -j "$sid" -o %T 2>&1)"
  fi
else
  bad "job $id never ran under Slurm: $(lathe show "$id")"
fi

# 3. scancel from outside: the Lathe job fails with Slurm's state and message.
id=$(lathe submit sleep --steps 600 --delay-ms 100 | grep -o '[0-9]*' | head -1)
if wait_for 30 running "$id"; then
  sid=$(field "$id" slurm_job)
  scancel "$sid"
  if wait_for 20 is_state "$id" failed; then
    reason=$(field "$id" reason)
    if [[ $reason == *"Slurm job $sid ended CANCELLED"*"CANCELLED AT"* ]]; then
      ok "scancel from outside failed job $id: $reason"
    else
      bad "job $id failed without Slurm's reason: $reason"
    fi
  else
    bad "job $id after an outside scancel: $(field "$id" state) $(field "$id" reason)"
  fi
else
  bad "job $id never ran under Slurm"
fi

# 4. The worker killed on its node (as a node failure would): the job fails with Slurm's state for the batch job.
# Meanwhile a stranger's key cannot reach the Slurm workers' socket.
id=$(lathe submit sleep --steps 600 --delay-ms 100 | grep -o '[0-9]*' | head -1)
if wait_for 30 running "$id"; then
  sid=$(field "$id" slurm_job)
  script="$(field "$id" dir)/slurm-job.sh"
  denied=$(lathe --json daemon status | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['auth_denied'])")
  /usr/bin/python3 - "$script" <<'PY'
import re, sys, time, zmq
text = open(sys.argv[1]).read()
endpoint = re.search(r"--connect '([^']*)'", text).group(1)
server = re.search(r"--server-key '([^']*)'", text).group(1)
gen = re.search(r"--gen (\d+)", text).group(1)
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
pub, sec = zmq.curve_keypair()
s.curve_serverkey, s.curve_publickey, s.curve_secretkey = server.encode(), pub, sec
s.setsockopt(zmq.ROUTING_ID, ("w" + gen).encode())
s.setsockopt(zmq.LINGER, 0)
s.connect(endpoint)
s.send(b"\x83\xa1t\xa4done\xa3job\x01\xa6status\xa6failed")  # {t: done, job: 1, status: failed}
time.sleep(1.5)
PY
  now=$(lathe --json daemon status | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['auth_denied'])")
  if [ "$now" -gt "$denied" ] && is_state "$id" running; then
    ok "a key lathed did not issue was refused (auth_denied $denied -> $now); job $id still running"
  else
    bad "a stranger's key: auth_denied $denied -> $now, job $id $(field "$id" state)"
  fi
  pkill -9 -f "lathe-worker --one-shot .* --gen $(grep -o -- '--gen [0-9]*' "$script" | grep -o '[0-9]*$') " || true
  if wait_for 30 is_state "$id" failed && [[ $(field "$id" reason) == *"Slurm job $sid ended FAILED"* ]]; then
    ok "a worker killed on its node failed job $id: $(field "$id" reason)"
  else
    bad "job $id after its worker was killed: $(field "$id" state) $(field "$id" reason)"
  fi
else
  bad "job $id never ran under Slurm"
fi

# 5. lathed stops while a Slurm job runs: the job checkpoints and waits; started again, lathed sends it to Slurm
# anew and it resumes from its checkpoint.
start_lathed() {
  "$bin/lathed" --executor slurm --slurm-listen 'tcp://127.0.0.1:*' --slurm-host 127.0.0.1 --slurm-poll-ms 500 \
    >>"$work/lathed.log" 2>&1 &
  wait_for 10 lathe --no-autostart daemon status >/dev/null 2>&1
}
id=$(lathe submit sleep --steps 80 --delay-ms 100 | grep -o '[0-9]*' | head -1)
step() { lathe --json show "$1" | /usr/bin/python3 -c "import json,sys; print((json.load(sys.stdin).get('progress') or {}).get('step', 0))"; }
past10() { [ "$(step "$1")" -ge 10 ]; }
if wait_for 30 running "$id" && wait_for 20 past10 "$id"; then
  sid=$(field "$id" slurm_job)
  lathe daemon stop >/dev/null
  if wait_for 20 bash -c "squeue -h --states=all -j '$sid' -o %T | grep -q COMPLETED"; then
    ok "lathe daemon stop: Slurm job $sid stopped at a checkpoint and ended"
  else
    bad "Slurm job $sid after lathed stopped: $(squeue -h --states=all -j "$sid" -o %T 2>&1)"
  fi
  start_lathed
  if wait_for 40 is_state "$id" succeeded; then
    from=$(lathe --json result "$id" | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['result'].get('resumed_from', 0))")
    if [ "$from" -ge 10 ] && [ "$(field "$id" slurm_job)" = "" ]; then
      ok "job $id ran again under Slurm after the restart and resumed from step $from"
    else
      bad "job $id resumed from step '$from'"
    fi
  else
    bad "job $id after lathed restarted: $(field "$id" state) $(field "$id" reason)"
  fi
else
  bad "job $id never ran under Slurm"
fi

# lathed killed outright while a Slurm job runs: started again, it cancels the orphaned Slurm job (its worker can no
# longer report) and sends the job to Slurm anew.
id=$(lathe submit sleep --steps 600 --delay-ms 100 | grep -o '[0-9]*' | head -1)
if wait_for 30 running "$id"; then
  sid=$(field "$id" slurm_job)
  kill -9 "$(lathe --json daemon status | /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['pid'])")"
  sleep 0.5
  start_lathed
  new_sid() { [ -n "$(field "$1" slurm_job)" ] && [ "$(field "$1" slurm_job)" != "$2" ]; }
  if wait_for 20 bash -c "squeue -h --states=all -j '$sid' -o %T | grep -q CANCELLED" && wait_for 30 new_sid "$id" "$sid"; then
    ok "after lathed was killed: orphaned Slurm job $sid cancelled, job $id sent again as Slurm job $(field "$id" slurm_job)"
  else
    bad "after lathed was killed: Slurm job $sid $(squeue -h --states=all -j "$sid" -o %T 2>&1), job $id $(field "$id" state)"
  fi
  lathe cancel "$id" >/dev/null
  wait_for 20 is_state "$id" cancelled || bad "job $id did not cancel"
else
  bad "job $id never ran under Slurm"
fi

# 6. Bad input.
id=$(lathe submit sleep --steps 1 --partition nosuch | grep -o '[0-9]*' | head -1)
if wait_for 20 is_state "$id" failed && [[ $(field "$id" reason) == *"sbatch refused the job"*nosuch* ]]; then
  ok "a partition Slurm does not have: $(field "$id" reason)"
else
  bad "job $id with --partition nosuch: $(field "$id" state) $(field "$id" reason)"
fi
expect_refused() { # the flag the refusal must name, then the submit arguments
  local want=$1 out
  shift
  if out=$(lathe submit sleep "$@" 2>&1); then
    bad "accepted: $* ($out)"
  elif [[ $out == *"$want"* ]]; then
    ok "refused $*: $out"
  else
    bad "refused $* without naming $want: $out"
  fi
}
expect_refused --partition --executor local --partition debug
expect_refused --device --device 0
expect_refused --gres --gres 'gpu:1;rm'
expect_refused --executor --executor cloud
lathe daemon stop >/dev/null
if out=$(PATH=/nonexistent "$bin/lathed" --executor slurm 2>&1); then
  bad "lathed --executor slurm started without sbatch"
elif [[ $out == *"--executor slurm: Slurm cannot be used here"* ]]; then
  ok "lathed without sbatch refuses --executor slurm: $(echo "$out" | tail -n 1)"
else
  bad "lathed without sbatch: $out"
fi

if [ $fails -ne 0 ]; then
  echo "slurm test: $fails FAILED"
  exit 1
fi
echo "slurm test: all passed"
