#!/usr/bin/env python3
"""The Gearman side of `jobcast-bench peers`: a worker and a client that speak Gearman's
binary protocol over TCP with the standard library only, as a home-made Python job
runner does (one process per worker, `subprocess` to run the script).

    gearman_peer.py worker PORT FUNCTION COMMAND...
    gearman_peer.py burst PORT FUNCTION RUNS      # submit RUNS at once, wait for all
    gearman_peer.py latency PORT FUNCTION RUNS    # one at a time on an idle server

Every job's answer is the worker's wall-clock time (µs since the epoch) just after the
script's process was spawned, so the client can time submit -> process started. The
client prints one JSON object on stdout.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import time

REQ = b"\0REQ"
RES = b"\0RES"
CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
NO_JOB = 10
WORK_COMPLETE = 13
WORK_FAIL = 14
SUBMIT_JOB_HIGH = 21
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
ERROR = 19


def own_cpu():
    times = os.times()
    return times.user + times.system


def now_us():
    return time.time_ns() // 1000


class Connection:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, kind, *args):
        data = b"\0".join(args)
        self.sock.sendall(REQ + struct.pack(">II", kind, len(data)) + data)

    def send_many(self, packets):
        out = bytearray()
        for kind, args in packets:
            data = b"\0".join(args)
            out += REQ + struct.pack(">II", kind, len(data)) + data
        self.sock.sendall(out)

    def receive(self):
        while True:
            if len(self.buffer) >= 12:
                magic, kind, size = self.buffer[:4], *struct.unpack(">II", self.buffer[4:12])
                if magic != RES:
                    raise RuntimeError("not a Gearman response")
                if len(self.buffer) >= 12 + size:
                    data = self.buffer[12 : 12 + size]
                    self.buffer = self.buffer[12 + size :]
                    if kind == ERROR:
                        raise RuntimeError("gearmand: " + data.decode(errors="replace"))
                    return kind, data
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("gearmand closed the connection")
            self.buffer += chunk


def worker(port, function, command):
    conn = Connection(port)
    conn.send(CAN_DO, function.encode())
    while True:
        conn.send(GRAB_JOB_UNIQ)
        kind, data = conn.receive()
        if kind == NO_JOB:
            conn.send(PRE_SLEEP)
            while True:
                kind, _ = conn.receive()
                if kind == NOOP:
                    break
            continue
        if kind != JOB_ASSIGN_UNIQ:
            continue
        handle = data.split(b"\0", 1)[0]
        process = subprocess.Popen(command)
        started = now_us()
        code = process.wait()
        if code == 0:
            conn.send(WORK_COMPLETE, handle, str(started).encode())
        else:
            conn.send(WORK_FAIL, handle)


def submit(conn, function, n, submitted, handles):
    packets = []
    for i in range(n):
        packets.append((SUBMIT_JOB, [function.encode(), b"%d-%d" % (now_us(), i), b""]))
    sent = now_us()
    conn.send_many(packets)
    for _ in range(n):
        kind, data = conn.receive()
        while kind != JOB_CREATED:
            # A fast job can complete before all creations are read.
            handles.setdefault("early", []).append((kind, data))
            kind, data = conn.receive()
        submitted[data] = sent


def burst(port, function, runs):
    conn = Connection(port)
    submitted, handles, latencies = {}, {}, []
    first = now_us()
    submit(conn, function, runs, submitted, handles)
    pending = handles.get("early", [])
    done = 0
    failed = 0
    while done + failed < runs:
        kind, data = pending.pop(0) if pending else conn.receive()
        if kind == WORK_COMPLETE:
            handle, started = data.split(b"\0", 1)
            latencies.append(int(started) - submitted.get(handle, first))
            done += 1
        elif kind == WORK_FAIL:
            failed += 1
    elapsed = (now_us() - first) / 1e6
    print(json.dumps({"runs": runs, "failed": failed, "seconds": elapsed, "cpu_seconds": own_cpu()}))


def latency(port, function, runs):
    conn = Connection(port)
    latencies = []
    for _ in range(runs):
        submitted, handles = {}, {}
        submit(conn, function, 1, submitted, handles)
        pending = handles.get("early", [])
        while True:
            kind, data = pending.pop(0) if pending else conn.receive()
            if kind == WORK_COMPLETE:
                handle, started = data.split(b"\0", 1)
                latencies.append(int(started) - submitted[handle])
                break
            if kind == WORK_FAIL:
                raise RuntimeError("a run failed")
    print(json.dumps({"runs": runs, "latencies_us": latencies}))


def main():
    mode = sys.argv[1]
    port = int(sys.argv[2])
    function = sys.argv[3]
    if mode == "worker":
        worker(port, function, sys.argv[4:])
    elif mode == "burst":
        burst(port, function, int(sys.argv[4]))
    elif mode == "latency":
        latency(port, function, int(sys.argv[4]))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
