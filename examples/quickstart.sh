#!/usr/bin/env bash
# Builds jobcast, then runs a broker with its store under .jobcast/, two workers, and the
# example jobs. Ctrl-C stops everything (workers drain first).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --bins
bin=target/debug
mkdir -p .jobcast
export JOBCAST_ADMIN_SECRET=quickstart-admin-secret-change-me

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

rm -f .jobcast/broker.ready
"$bin/jobcast-broker" --config examples/broker.toml --jobs examples/jobs.toml \
  --ready-file .jobcast/broker.ready 2>>.jobcast/broker.log &
pids+=($!)
for _ in $(seq 100); do [ -f .jobcast/broker.ready ] && break; sleep 0.1; done
[ -f .jobcast/broker.ready ] || { echo "the broker did not start; see .jobcast/broker.log" >&2; exit 1; }

"$bin/jobcast-worker" --config examples/worker-1.toml 2>>.jobcast/w1.log &
pids+=($!)
"$bin/jobcast-worker" --config examples/worker-2.toml 2>>.jobcast/w2.log &
pids+=($!)

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
wait
