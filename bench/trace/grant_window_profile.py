#!/usr/bin/env python3
"""What a worker's main thread does between receiving a grant and starting its process.

Reads `perf script -F comm,tid,time,event,trace,ip,sym` of a recording made while
`jobcast-bench latency` runs:

    perf record -p WORKER_PID -e cpu-clock -F 4000 --call-graph dwarf,8192 \\
        -e syscalls:sys_exit_recvfrom -e syscalls:sys_enter_clone3 -- sleep 3

A window opens when the worker's libzmq thread receives a grant (a frame of --grant
bytes, 0xf0 for the bench's `noop` job) and closes at the main thread's next clone3. The
main thread's CPU samples inside windows are counted by every function on their stacks
(inclusive share) and by their leaf function.
"""
import argparse
import collections
import re

HEADER = re.compile(r"\s*(\S+)\s+(\d+)\s+([\d.]+):\s+(?:\d+\s+)?(\S+):\s*(.*)")


def samples(path):
    current = None
    with open(path) as f:
        for line in f:
            if not line.strip():
                if current:
                    yield current
                current = None
                continue
            m = HEADER.match(line) if not line.startswith("\t") else None
            if m:
                if current:
                    yield current
                current = {"tid": int(m.group(2)), "event": m.group(4), "rest": m.group(5), "frames": []}
            elif current is not None:
                parts = line.strip().split(None, 1)
                if len(parts) == 2:
                    current["frames"].append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1]).strip())
    if current:
        yield current


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("script")
    parser.add_argument("--grant", type=lambda s: int(s, 0), default=0xF0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default=r"jobcast_|rmp_serde|zmq::|ring_core|<?tokio::process|"
                        r"__x64_sys_|epoll_wait",
                        help="list only inclusive functions whose name starts with this")
    args = parser.parse_args()
    events = list(samples(args.script))
    main_tid = next((s["tid"] for s in events if "clone3" in s["event"]), None)
    if main_tid is None:
        raise SystemExit("no clone3 in the recording")
    inclusive, leaves = collections.Counter(), collections.Counter()
    windows = counted = 0
    window = None
    for s in events:
        if "sys_exit_recvfrom" in s["event"] and s["rest"].strip() == f"{args.grant:#x}":
            window = []
        elif window is not None and s["tid"] == main_tid and "clone3" in s["event"]:
            windows += 1
            for frames in window:
                counted += 1
                for name in set(frames):
                    inclusive[name] += 1
                if frames:
                    leaves[frames[0]] += 1
            window = None
        elif window is not None and s["tid"] == main_tid and "cpu-clock" in s["event"]:
            window.append(s["frames"])
    if not counted:
        raise SystemExit(f"no samples inside {windows} windows")
    print(f"{windows} grants, {counted} samples of the main thread between receipt and clone3")
    print("inclusive:")
    wanted = re.compile(args.match)
    listed = [(name, n) for name, n in inclusive.most_common() if wanted.match(name)]
    for name, n in listed[: args.top]:
        print(f"  {100 * n / counted:5.1f}%  {name[:140]}")
    print("leaf:")
    for name, n in leaves.most_common(args.top // 2):
        print(f"  {100 * n / counted:5.1f}%  {name[:140]}")


if __name__ == "__main__":
    main()
