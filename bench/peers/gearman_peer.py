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

With GEARMAN_PEER_LEDGER set to a file, jobs are background jobs (SUBMIT_JOB_BG), the
ones gearmand keeps in its persistent queue (`--queue-type libsqlite3`: durable), whose
end no client hears of: each worker appends "HANDLE STARTED_US CODE" to the ledger when
its script ends, and the client reads its answers there.
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
SUBMIT_JOB_BG = 18
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
        if LEDGER:
            with open(LEDGER, "ab") as ledger:
                ledger.write(b"%s %d %d\n" % (handle, started, code))
        if code == 0:
            conn.send(WORK_COMPLETE, handle, str(started).encode())
        else:
            conn.send(WORK_FAIL, handle)


LEDGER = os.environ.get("GEARMAN_PEER_LEDGER")


class Ledger:
    """The workers' answers to background jobs, read as they are appended (from the
    ledger's end when it is opened: earlier clients' answers are theirs)."""

    def __init__(self):
        try:
            self.offset = os.path.getsize(LEDGER)
        except FileNotFoundError:
            self.offset = 0
        self.partial = b""

    def read(self):
        """(handle, started, code) of each answer appended since the last read."""
        try:
            with open(LEDGER, "rb") as ledger:
                ledger.seek(self.offset)
                data = ledger.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        answers = []
        for line in lines:
            handle, started, code = line.split(b" ")
            answers.append((handle, int(started), int(code)))
        return answers


def background_answers(ledger, wanted):
    """Waits for the ledger to answer `wanted` handles; returns their answers."""
    answers = []
    while len(answers) < wanted:
        answers.extend(ledger.read())
        if len(answers) < wanted:
            time.sleep(0.001)
    return answers


def submit(conn, function, n, submitted, handles):
    kind = SUBMIT_JOB_BG if LEDGER else SUBMIT_JOB
    packets = []
    for i in range(n):
        packets.append((kind, [function.encode(), b"%d-%d" % (now_us(), i), b""]))
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
    if LEDGER:
        ledger = Ledger()
        submit(conn, function, runs, submitted, handles)
        answers = background_answers(ledger, runs)
        failed = sum(1 for _, _, code in answers if code != 0)
        elapsed = (now_us() - first) / 1e6
        print(json.dumps({"runs": runs, "failed": failed, "seconds": elapsed, "cpu_seconds": own_cpu()}))
        return
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
    ledger = Ledger() if LEDGER else None
    for _ in range(runs):
        submitted, handles = {}, {}
        submit(conn, function, 1, submitted, handles)
        if ledger:
            [(handle, started, code)] = background_answers(ledger, 1)
            if code != 0:
                raise RuntimeError("a run failed")
            latencies.append(started - submitted[handle])
            continue
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
