#!/bin/sh
# Traces idle dispatches (`jobcast-bench latency`) for two seconds with perf's
# tracepoints (few enough not to disturb the timing much: no write(2) events, which perf
# itself would flood) and prints where each dispatch's time went.
# Usage: bench/trace/dispatch-steps.sh [DIR with jobcast-bench, -broker, -worker]
# Needs perf and root (system-wide tracepoints).
set -eu
dir=${1:-target/release}
out=$(mktemp -d)
"$dir/jobcast-bench" latency > "$out/latency.txt" 2>&1 &
bench=$!
sleep 1 # the first runs are under way; the trace covers the middle of the part
perf record -a -o "$out/perf.data" \
  -e syscalls:sys_enter_fdatasync,syscalls:sys_exit_fdatasync \
  -e syscalls:sys_enter_sendto,syscalls:sys_exit_recvfrom,syscalls:sys_enter_read \
  -e syscalls:sys_enter_clone3,syscalls:sys_enter_execve \
  -e sched:sched_switch,sched:sched_wakeup -- sleep 2 > /dev/null 2>&1
perf script -i "$out/perf.data" -F comm,tid,cpu,time,event,trace > "$out/trace.txt" 2>/dev/null
python3 "$(dirname "$0")/dispatch_steps.py" "$out/trace.txt"
wait "$bench"
grep "process spawned" "$out/latency.txt"
rm -rf "$out"
