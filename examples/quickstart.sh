#!/usr/bin/env bash
# Builds jobcast, then runs a broker with its store under .jobcast/, two workers, and the
# example jobs. Ctrl-C (or closing the terminal) stops everything in order: the workers drain first (they finish
# what they run; Ctrl-C again stops those runs now), then the broker. If one of them
# dies meanwhile, the script says which, and stops the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

# The three programs only (not the benchmark tool). The first build compiles a few
# hundred crates, libzmq among them: several minutes on a small machine.
[ -x target/debug/jobcast-broker ] || echo "building jobcast (the first build takes several minutes)..." >&2
cargo build -p jobcast-broker -p jobcast-worker -p jobcastctl
bin=target/debug
mkdir -p .jobcast
export JOBCAST_ADMIN_SECRET=quickstart-admin-secret-change-me

declare -A pid_of=()   # name → pid
declare -A log_of=()   # name → log file
stopping=0

# Each daemon in a session of its own: the terminal's Ctrl-C reaches this script only,
# which stops them in order.
start() {
  local name=$1 log=$2
  shift 2
  setsid "$@" 2>>"$log" &
  pid_of[$name]=$!
  log_of[$name]=$log
}

stop() {
  local name=$1 pid=${pid_of[$1]:-}
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
}

wait_for() {
  local name=$1 pid=${pid_of[$1]:-}
  [ -n "$pid" ] || return 0
  local code=0
  # A wait cut short by a signal (a second Ctrl-C) is taken up again until it has gone.
  while true; do
    code=0
    wait "$pid" 2>/dev/null || code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  unset "pid_of[$name]"
  [ "$code" -eq 0 ] || echo "$name exited with code $code (see ${log_of[$name]})" >&2
}

cleanup() {
  trap - EXIT
  if [ "$stopping" -eq 1 ]; then
    # A second Ctrl-C: the workers' second SIGTERM stops their runs now.
    stop w1; stop w2
    return
  fi
  stopping=1
  trap cleanup INT TERM
  echo "stopping: workers drain first (Ctrl-C again to stop their runs now)..." >&2
  stop w1; stop w2
  wait_for w1; wait_for w2
  stop broker
  wait_for broker
  echo "stopped" >&2
  exit 0
}
# A closed terminal (SIGHUP) stops everything as Ctrl-C does, with nothing more said there.
hangup() {
  exec >>.jobcast/quickstart.log 2>&1
  cleanup
}
trap cleanup INT TERM EXIT
trap hangup HUP

rm -f .jobcast/broker.ready
start broker .jobcast/broker.log "$bin/jobcast-broker" --config examples/broker.toml \
  --jobs examples/jobs.toml --ready-file .jobcast/broker.ready
for _ in $(seq 100); do [ -f .jobcast/broker.ready ] && break; sleep 0.1; done
[ -f .jobcast/broker.ready ] || { echo "the broker did not start; see .jobcast/broker.log" >&2; exit 1; }

start w1 .jobcast/w1.log "$bin/jobcast-worker" --config examples/worker-1.toml
start w2 .jobcast/w2.log "$bin/jobcast-worker" --config examples/worker-2.toml

"$bin/jobcastctl" enqueue hello >/dev/null
cat <<MSG

jobcast is running: broker on tcp://127.0.0.1:5555, workers w1 and w2, example jobs applied.
Dashboard: http://127.0.0.1:5000  (token: quickstart-operator-token-change-me)
Logs: .jobcast/broker.log, .jobcast/w1.log, .jobcast/w2.log   Store: .jobcast/broker/

In another terminal (export JOBCAST_ADMIN_SECRET=$JOBCAST_ADMIN_SECRET first):
  $bin/jobcastctl ping
  $bin/jobcastctl jobs
  $bin/jobcastctl enqueue countdown
  $bin/jobcastctl runs
  $bin/jobcastctl logs -f <run id or prefix>
  $bin/jobcastctl kill <run id or prefix>
  $bin/jobcastctl status

JSON API (token from examples/broker.toml):
  curl -H 'Authorization: Bearer quickstart-viewer-token-change-me' http://127.0.0.1:5000/api/v1/runs

Ctrl-C to stop.
MSG

# Until Ctrl-C, or until one of them dies: then say which, and stop the others.
while true; do
  died=""
  code=0
  wait -n -p died "${pid_of[@]}" || code=$?
  [ "$stopping" -eq 1 ] && continue
  for name in "${!pid_of[@]}"; do
    if [ "${pid_of[$name]}" = "$died" ]; then
      unset "pid_of[$name]"
      echo "$name stopped unexpectedly (exit code $code); see ${log_of[$name]}" >&2
    fi
  done
  cleanup
done
