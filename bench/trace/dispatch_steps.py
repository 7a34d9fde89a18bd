#!/usr/bin/env python3
"""Where an idle dispatch's time goes, step by step, from a system-wide perf trace.

Reads `perf script -F comm,tid,cpu,time,event,trace` output of a trace taken while
`jobcast-bench latency` runs (see dispatch-steps.sh) and, for each enqueue the bench sent,
finds in order: the broker receiving it, the loop woken (its first read), the committer
woken, the fdatasync entered and left, the grant sent, the worker receiving it, the
worker's clone3 and the script's execve. Prints each step's median and 90th percentile
(µs), and the mean of each step over the slowest tenth of dispatches.

The frames are told apart by size: an enqueue of the bench's `noop` job is 0xa1 bytes on
the wire and its grant 0xf0; other jobs or protocol changes need other sizes (--enqueue,
--grant).
"""
import argparse
import re
import statistics

LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def events(path):
    out = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                out.append((float(m.group(4)) * 1e6, m.group(1), m.group(5), m.group(6)))
    out.sort()
    return out


def steps(enqueue, grant):
    def sent(size):
        return lambda e: "sys_enter_sendto" in e[2] and f"len: {size:#010x}" in e[3]

    def received(size):
        return lambda e: "sys_exit_recvfrom" in e[2] and e[3].strip() == f"{size:#x}"

    return [
        ("broker received", received(enqueue)),
        # The loop's first read after it: its socket's eventfd, once the loop runs.
        ("loop woken", lambda e: e[1] == "jobcast-broker" and "sys_enter_read" in e[2]),
        ("committer woken", lambda e: e[2] == "sched:sched_wakeup" and "comm=jobcast-commit" in e[3]),
        ("fdatasync in", lambda e: e[1] == "jobcast-commit" and "enter_fdatasync" in e[2]),
        ("fdatasync out", lambda e: e[1] == "jobcast-commit" and "exit_fdatasync" in e[2]),
        ("grant sent", sent(grant)),
        ("worker received", received(grant)),
        ("clone3", lambda e: e[1] == "jobcast-worker" and "enter_clone3" in e[2]),
        ("execve", lambda e: "enter_execve" in e[2]),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("trace")
    parser.add_argument("--enqueue", type=lambda s: int(s, 0), default=0xA1)
    parser.add_argument("--grant", type=lambda s: int(s, 0), default=0xF0)
    args = parser.parse_args()
    ev = events(args.trace)
    marks = steps(args.enqueue, args.grant)
    # Only the bench sends enqueues (from libzmq's thread, named ZMQbg/IO/0 like the
    # broker's): the frames are told apart by size alone.
    sends = [i for i, e in enumerate(ev)
             if "sys_enter_sendto" in e[2] and f"len: {args.enqueue:#010x}" in e[3]]
    dispatches = []
    for start, end in zip(sends, sends[1:]):
        at, k = {}, start
        for name, found in marks:
            while k < end and not found(ev[k]):
                k += 1
            if k >= end:
                break
            at[name] = ev[k][0] - ev[start][0]
        if len(at) == len(marks):
            dispatches.append(at)
    if not dispatches:
        raise SystemExit(f"no whole dispatch among {len(sends)} enqueues: other frame sizes?")
    names = [name for name, _ in marks]
    slowest = sorted(dispatches, key=lambda d: d[names[-1]])[int(len(dispatches) * 0.9):]
    print(f"{len(dispatches)} dispatches of {len(sends)} enqueues; µs from the bench's send")
    print("| step | p50 | p90 | slowest tenth's mean |")
    print("|---|---|---|---|")
    previous = None
    for name in names:
        took = [d[name] - (d[previous] if previous else 0) for d in dispatches]
        slow = [d[name] - (d[previous] if previous else 0) for d in slowest]
        step = f"{previous} → {name}" if previous else f"sent → {name}"
        print(f"| {step} | {statistics.median(took):.0f} | {sorted(took)[int(len(took) * 0.9)]:.0f} "
              f"| {statistics.mean(slow):.0f} |")
        previous = name


if __name__ == "__main__":
    main()
