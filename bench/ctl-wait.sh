#!/bin/sh
# How long `jobcastctl wait` takes to say a run ended: a broker and a worker from
# examples/, on free loopback ports, a job that sleeps 0.5 s; N times: enqueue, then time
# `jobcastctl wait` for the run (the run is under way when the wait starts). Prints the
# median and the longest, in ms.
# Usage: bench/ctl-wait.sh [DIR with jobcast-broker and jobcast-worker] [DIR with jobcastctl] [N]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
daemons=$(cd "${1:-$root/target/release}" && pwd)
ctl_dir=$(cd "${2:-$daemons}" && pwd)
n=${3:-10}
work=$(mktemp -d)
trap 'kill $worker $broker 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
sed -e "s#^data_dir = .*#data_dir = \"$work/data\"#" \
  -e 's#^router = .*#router = "tcp://127.0.0.1:0"#' \
  -e 's#^publish = .*#publish = "tcp://127.0.0.1:0"#' \
  -e 's#^listen = .*#listen = "off"#' "$root/examples/broker.toml" > "$work/broker.toml"
printf '[jobs.half-second]\ncommand = "sleep 0.5"\n' > "$work/jobs.toml"
"$daemons/jobcast-broker" --config "$work/broker.toml" --jobs "$work/jobs.toml" \
  --ready-file "$work/ready" > "$work/broker.log" 2>&1 &
broker=$!
tries=0
until [ -f "$work/ready" ]; do
  tries=$((tries + 1)); [ $tries -lt 200 ] || { echo "the broker did not start" >&2; exit 1; }
  sleep 0.05
done
router=$(sed -n 's/^router = "\(.*\)"/\1/p' "$work/ready")
events=$(sed -n 's/^publish = "\(.*\)"/\1/p' "$work/ready")
sed -e "s#^script_temp_path = .*#script_temp_path = \"$work/w1\"#" \
  -e "s#^broker = .*#broker = \"$router\"#" -e "s#^events = .*#events = \"$events\"#" \
  -e 's#^containment = .*#containment = "process-tree"#' "$root/examples/worker-1.toml" > "$work/worker.toml"
"$daemons/jobcast-worker" --config "$work/worker.toml" > "$work/worker.log" 2>&1 &
worker=$!
export JOBCAST_ADMIN_SECRET=quickstart-admin-secret-change-me
ctl() { "$ctl_dir/jobcastctl" --broker "$router" "$@"; }
i=0
while [ $i -lt "$n" ]; do
  run=$(ctl --json enqueue half-second | sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
  start=$(date +%s%N)
  ctl wait "$run" > /dev/null
  end=$(date +%s%N)
  echo $(((end - start) / 1000000))
  i=$((i + 1))
done | sort -n | awk '{ms[NR] = $1} END {print "jobcastctl wait, ms: median", ms[int((NR + 1) / 2)], "longest", ms[NR]}'
