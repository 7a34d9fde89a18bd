"""A small jobcast client in Python, written from docs/PROTOCOL.md alone.

Needs pyzmq, msgpack and PyNaCl (`pip install -r requirements.txt`). Two roles:

    # as an operator (the admin key)
    python3 jobcast.py --secret-env JOBCAST_ADMIN_SECRET status
    python3 jobcast.py --secret-env JOBCAST_ADMIN_SECRET enqueue backup
    python3 jobcast.py --secret-env JOBCAST_ADMIN_SECRET kill 3f2a
    python3 jobcast.py --secret-env JOBCAST_ADMIN_SECRET ping

    # as a worker: register, claim, run each job's command or script, report, for ever
    python3 jobcast.py --name w9 --secret-env W9_SECRET worker --pools default
"""

import argparse
import hashlib
import hmac
import os
import subprocess
import sys
import tempfile
import time

import msgpack
import zmq
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

VERSION = 2
BROKER = "broker"
SALT = b"jobcast/2"
AAD = b"jobcast/2"
MAX_SKEW_MS = 30_000


def hkdf_sha256(salt, ikm, info, length=32):
    """RFC 5869 HKDF with SHA-256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def message_key(secret, sender, receiver):
    """key(from -> to), section 3.1."""
    info = sender.encode() + b"\x00" + receiver.encode()
    return hkdf_sha256(SALT, secret, info)


def connection_password(secret):
    """The ZMTP PLAIN password, section 1."""
    return hmac.new(secret, b"jobcast connection password v1", hashlib.sha256).hexdigest()


def now_ms():
    return int(time.time() * 1000)


def seal(sender, receiver, secret, body, ts=None, nonce=None, aead_nonce=None):
    """A sealed frame, section 3.2."""
    payload = msgpack.packb(
        {
            "v": VERSION,
            "from": sender,
            "ts": now_ms() if ts is None else ts,
            "nonce": int.from_bytes(os.urandom(8), "little") if nonce is None else nonce,
            "body": body,
        }
    )
    aead_nonce = os.urandom(24) if aead_nonce is None else aead_nonce
    key = message_key(secret, sender, receiver)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(payload, AAD, aead_nonce, key)
    return msgpack.packb({"from": sender, "nonce": aead_nonce, "sealed": sealed})


class Refused(Exception):
    """The broker refused a frame (section 2) or a request (an `error` reply)."""


def open_frame(frame, me, secret, expected_sender=BROKER):
    """Opens a frame sealed to `me`; returns its body. Raises Refused for a refusal."""
    outer = msgpack.unpackb(frame, raw=False)
    if "refused" in outer:
        raise Refused(f"{outer['refused']}: {outer['detail']}")
    if outer["from"] != expected_sender:
        raise ValueError(f"frame from {outer['from']!r}, expected {expected_sender!r}")
    key = message_key(secret, outer["from"], me)
    payload = msgpack.unpackb(
        crypto_aead_xchacha20poly1305_ietf_decrypt(outer["sealed"], AAD, outer["nonce"], key),
        raw=False,
    )
    if payload["v"] != VERSION or payload["from"] != outer["from"]:
        raise ValueError("unexpected version or sender")
    if abs(payload["ts"] - now_ms()) > MAX_SKEW_MS:
        raise ValueError("reply outside the clock-skew window")
    return payload["body"]


class Connection:
    """A DEALER to the broker's ROUTER, authenticated with PLAIN (section 1)."""

    def __init__(self, endpoint, name, secret, timeout_ms=5000):
        self.name, self.secret, self.timeout_ms = name, secret, timeout_ms
        self.context = zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
        self.socket.plain_username = name.encode()
        self.socket.plain_password = connection_password(secret).encode()
        self.socket.connect(endpoint)
        self.next_id = 1

    def request(self, request, timeout_ms=None):
        """Sends one request and returns its reply (a decoded Reply value)."""
        timeout_ms = timeout_ms or self.timeout_ms
        request_id = self.next_id
        self.next_id += 1
        body = {"request": {"id": request_id, "request": request}}
        self.socket.send(seal(self.name, BROKER, self.secret, body))
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left = int((deadline - time.monotonic()) * 1000)
            if left <= 0 or not self.socket.poll(left):
                raise TimeoutError(f"no reply within {timeout_ms} ms")
            reply = open_frame(self.socket.recv(), self.name, self.secret)["reply"]
            if reply["id"] != request_id:
                continue  # a late reply to an earlier request
            reply = reply["reply"]
            if isinstance(reply, dict) and "error" in reply:
                raise Refused(f"{reply['error']['code']}: {reply['error']['message']}")
            return reply

    def close(self):
        self.socket.close()


# ---- operator ----

def status(conn):
    return conn.request("status")["status"]


def enqueue(conn, job):
    return conn.request({"enqueue": {"job": job}})["enqueued"]["run"]


def kill(conn, selector):
    return conn.request({"kill": {"selectors": [selector]}})["kill_result"]["outcomes"][0]


def ping(conn, timeout_ms=1000):
    return conn.request({"ping": {"worker": None, "timeout_ms": timeout_ms}})["ping_result"]["workers"]


def list_runs(conn, limit=50):
    return conn.request(
        {"list_runs": {"state": None, "job": None, "limit": limit}}
    )["runs"]["runs"]


# ---- worker ----

def run_assignment(assignment):
    """Runs one assignment's command or script; returns (outcome, output bytes)."""
    job = assignment["job"]
    env = dict(os.environ)
    env.update(job.get("env", {}))
    env["JOBCAST_RUN_ID"] = assignment["run_id"]
    exec_ = job["exec"]
    script_file = None
    if "command" in exec_:
        argv = exec_["command"]
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".script", delete=False) as f:
            f.write(exec_["script"])
            script_file = f.name
        interpreter = exec_["script"].splitlines()[0][2:].strip().split()
        argv = interpreter + [script_file]
    try:
        done = subprocess.run(
            argv, env=env, cwd=job.get("workdir"), capture_output=True,
            timeout=(job.get("timeout_ms") or 0) / 1000 or None,
        )
        code = done.returncode
        outcome = {"exited": {"code": code}} if code >= 0 else {"signaled": {"signal": -code}}
        return outcome, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        return "timed_out", (e.stdout or b"") + (e.stderr or b"")
    except OSError as e:
        return {"failed_to_start": {"reason": str(e)}}, b""
    finally:
        if script_file:
            os.unlink(script_file)


class Worker:
    """A worker with one slot: register, then on every `wake` hint (or every second)
    claim, run and report."""

    def __init__(self, router, publish, name, secret, pools):
        self.name, self.pools = name, pools
        self.conn = Connection(router, name, secret)
        self.events = self.conn.context.socket(zmq.SUB)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.plain_username = name.encode()
        self.events.plain_password = connection_password(secret).encode()
        for topic in ["all/", f"worker/{name}/"] + [f"pool/{p}/" for p in pools]:
            self.events.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.events.connect(publish)
        self.started = time.monotonic()

    def register(self):
        return self.conn.request({"register": {
            "hostname": os.uname().nodename, "pid": os.getpid(), "version": "python-example",
            "concurrency": 1, "pools": self.pools, "running": [], "max_log_bytes": 1 << 20,
        }})["registered"]

    def heartbeat(self):
        self.conn.request({"heartbeat": {"running": [], "free_slots": 1, "draining": False}})

    def work_once(self, wait_ms=0):
        """Claims one run and executes it; returns its id, or None if nothing was queued
        (or, with `wait_ms`, if nothing came within that time: the broker holds the claim)."""
        claim = {"max": 1, "wait_ms": wait_ms} if wait_ms else {"max": 1}
        granted = self.conn.request(
            {"claim": claim}, timeout_ms=self.conn.timeout_ms + wait_ms
        )["granted"]["runs"]
        if not granted:
            return None
        assignment = granted[0]
        run_id = assignment["run_id"]
        started = time.monotonic()
        self.conn.request({"run_started": {
            "run_id": run_id, "pid": os.getpid(), "spawned_at_us": int(time.time() * 1e6),
        }})
        outcome, output = run_assignment(assignment)
        if output:
            self.conn.request({"log_chunk": {"run_id": run_id, "offset": 0, "data": output}})
        self.conn.request({"run_finished": {
            "run_id": run_id, "outcome": outcome,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "log_bytes": len(output), "claim": 0,
        }})
        return run_id

    def serve(self, stop_after=None):
        """Works until `stop_after` runs are done (for ever when None)."""
        self.register()
        done = 0
        while stop_after is None or done < stop_after:
            if self.events.poll(1000):
                topic, event = self.events.recv_multipart()
                event = msgpack.unpackb(event, raw=False)
                if isinstance(event, dict) and "ping" in event:
                    self.conn.request({"pong": {"ping_id": event["ping"]["ping_id"], "info": {
                        "version": "python-example", "hostname": os.uname().nodename,
                        "pid": os.getpid(), "concurrency": 1, "pools": self.pools,
                        "running": [], "uptime_ms": int((time.monotonic() - self.started) * 1000),
                        "rss_bytes": 0, "draining": False,
                    }}})
                    continue
            self.heartbeat()
            while (stop_after is None or done < stop_after) and self.work_once():
                done += 1


def main():
    parser = argparse.ArgumentParser(description="A jobcast client written from docs/PROTOCOL.md")
    parser.add_argument("--router", default="tcp://127.0.0.1:5555")
    parser.add_argument("--publish", default="tcp://127.0.0.1:5556")
    parser.add_argument("--name", default="admin", help="sender name: admin, or a worker id")
    parser.add_argument("--secret-env", default="JOBCAST_ADMIN_SECRET",
                        help="environment variable holding the secret")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status")
    sub.add_parser("ping")
    sub.add_parser("runs")
    p = sub.add_parser("enqueue")
    p.add_argument("job")
    p = sub.add_parser("kill")
    p.add_argument("run")
    p = sub.add_parser("worker")
    p.add_argument("--pools", default="default")
    p.add_argument("--runs", type=int, default=None, help="stop after this many runs")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env)
    if not secret:
        sys.exit(f"jobcast.py: set {args.secret_env} to the secret of {args.name!r}")
    secret = secret.encode()
    if args.command == "worker":
        Worker(args.router, args.publish, args.name, secret, args.pools.split(",")).serve(args.runs)
        return
    conn = Connection(args.router, args.name, secret)
    try:
        result = {
            "status": lambda: status(conn),
            "ping": lambda: ping(conn),
            "runs": lambda: list_runs(conn),
            "enqueue": lambda: enqueue(conn, args.job),
            "kill": lambda: kill(conn, args.run),
        }[args.command]()
    except (Refused, TimeoutError) as e:
        sys.exit(f"jobcast.py: {e}")
    finally:
        conn.close()
    print(result)


if __name__ == "__main__":
    main()
