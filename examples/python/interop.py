"""End to end against a running broker, as an operator and as a worker, using only
jobcast.py (written from docs/PROTOCOL.md). The broker must know worker `--worker` and
have the jobs `py-hello` (pool `python`) and `py-parked` (pool `parked`, served by
nobody). CI runs this through integration-tests/tests/python_client.rs.

    JOBCAST_ADMIN_SECRET=… JOBCAST_WORKER_SECRET=… python3 interop.py --router … --publish …
"""

import argparse
import os
import sys
import threading
import time

import jobcast


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--router", required=True)
    parser.add_argument("--publish", required=True)
    parser.add_argument("--worker", default="w1")
    args = parser.parse_args()
    admin_secret = os.environ["JOBCAST_ADMIN_SECRET"].encode()
    worker_secret = os.environ["JOBCAST_WORKER_SECRET"].encode()
    results = []

    def check(what, ok, detail=""):
        results.append(bool(ok))
        print(f"{'ok  ' if ok else 'FAIL'} {what}{'' if ok else ': ' + str(detail)}")

    admin = jobcast.Connection(args.router, "admin", admin_secret)
    report = jobcast.status(admin)
    check("status answers with the broker's version", report["version"], report)

    run = jobcast.enqueue(admin, "py-hello")
    check("enqueue creates a queued run", run["state"] == "queued", run)

    worker = jobcast.Worker(args.router, args.publish, args.worker, worker_secret, ["python"])
    registered = worker.register()
    check("register is answered", registered["heartbeat_interval_ms"] > 0, registered)
    hint = None
    if worker.events.poll(5000):
        topic, event = worker.events.recv_multipart()
        hint = (topic, jobcast.msgpack.unpackb(event, raw=False))
    check(
        "hints arrive on the PUB socket (authenticated subscriber)",
        hint and hint[0] in (b"all/", b"pool/python/") and isinstance(hint[1], dict),
        hint,
    )
    done = None
    deadline = time.monotonic() + 20
    while done is None and time.monotonic() < deadline:
        done = worker.work_once()
        if done is None:
            time.sleep(0.1)
    check("the worker claims and runs the run", done == run["id"], done)

    log = admin.request({"get_log": {"run": run["id"], "offset": None}})["log"]
    check("the run succeeded", log["run"]["state"] == "succeeded", log["run"]["state"])
    check("its output reached the broker", b"hello from python" in log["data"], log["data"])
    runs = jobcast.list_runs(admin)
    check("list_runs shows it", any(r["id"] == run["id"] for r in runs), len(runs))

    started = time.monotonic()
    empty = worker.work_once(wait_ms=300)
    held = time.monotonic() - started
    check("a claim that may wait is held, then answered empty", empty is None and held >= 0.29, (empty, held))
    result = {}
    waiting = threading.Thread(target=lambda: result.update(done=worker.work_once(wait_ms=10_000)))
    waiting.start()
    queued = jobcast.enqueue(admin, "py-hello")
    waiting.join(20)
    check("a waiting claim is answered with the run queued", result.get("done") == queued["id"], result)

    # A read of the log held until the run ends (what `jobcastctl wait` asks), on a
    # connection of its own while this one works the run.
    last = jobcast.enqueue(admin, "py-hello")
    reader = jobcast.Connection(args.router, "admin", admin_secret, timeout_ms=20_000)
    held = {}
    read_end = {"get_log": {"run": last["id"], "offset": 2**64 - 1, "wait_ms": 15_000}}
    waiting = threading.Thread(target=lambda: held.update(log=reader.request(read_end)["log"]))
    waiting.start()
    deadline = time.monotonic() + 20
    done = None
    while done is None and time.monotonic() < deadline:
        done = worker.work_once(wait_ms=1_000)
    waiting.join(20)
    reader.close()
    ended = held.get("log", {})
    check(
        "a read held for the run's end is answered with it",
        done == last["id"] and ended.get("run", {}).get("state") == "succeeded" and ended.get("waited") is True,
        (done, ended.get("run", {}).get("state"), ended.get("waited")),
    )

    parked = jobcast.enqueue(admin, "py-parked")
    outcome = jobcast.kill(admin, parked["id"])
    check("kill cancels a queued run", "cancelled" in outcome, outcome)
    again = jobcast.kill(admin, parked["id"])
    check("kill is idempotent", "already_finished" in again, again)

    answers = jobcast.ping(admin, 500)
    check("ping lists the registered worker", any(a["worker"] == args.worker for a in answers), answers)

    try:
        jobcast.enqueue(admin, "no-such-job")
        check("an unknown job is refused", False, "accepted")
    except jobcast.Refused as e:
        check("an unknown job is refused", "not_found" in str(e), e)

    try:
        admin.request({"claim": {"max": 1}})
        check("the admin key cannot send worker requests", False, "accepted")
    except jobcast.Refused as e:
        check("the admin key cannot send worker requests", "forbidden" in str(e), e)

    wrong = jobcast.Connection(args.router, "admin", b"not-the-admin-secret", timeout_ms=1500)
    try:
        jobcast.status(wrong)
        check("a wrong secret gets nothing", False, "answered")
    except TimeoutError:
        check("a wrong secret gets nothing", True)
    wrong.close()

    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
