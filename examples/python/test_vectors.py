"""Checks this client against the test vectors of docs/PROTOCOL.md, read from the
document itself. Exits non-zero on any difference."""

import pathlib
import re
import sys

import msgpack

import jobcast

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def vectors(text):
    section = text.split("## 7. Test vectors", 1)[1].split("## 8.", 1)[0]
    key = re.search(r"`key\(w1 → broker\)` = `([0-9a-f]{64})`", section).group(1)
    password = re.search(r"connection password = `([0-9a-f]{64})`", section).group(1)
    blocks = ["".join(b.split()) for b in re.findall(r"```\n(.*?)```", section, re.S)]
    payload, request_frame, reply_frame = blocks
    return key, password, payload, request_frame, reply_frame


def main():
    key, password, payload, request_frame, reply_frame = vectors(DOC.read_text())
    secret = b"jobcast-test-vector-secret"
    ts, aead_nonce = 1800000000000, bytes(range(24))
    failures = 0

    def check(what, got, want):
        nonlocal failures
        ok = got == want
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            print(f"     got  {got}\n     want {want}")

    check("key(w1 -> broker)", jobcast.message_key(secret, "w1", "broker").hex(), key)
    check("connection password", jobcast.connection_password(secret), password)
    request = {"request": {"id": 7, "request": {"claim": {"max": 2}}}}
    check(
        "payload of vector 1",
        msgpack.packb({"v": 2, "from": "w1", "ts": ts, "nonce": 42, "body": request}).hex(),
        payload,
    )
    check(
        "frame of vector 1",
        jobcast.seal("w1", "broker", secret, request, ts, 42, aead_nonce).hex(),
        request_frame,
    )
    reply = {"reply": {"id": 7, "reply": {"granted": {"runs": [], "more_queued": False}}}}
    check(
        "frame of vector 2",
        jobcast.seal("broker", "w1", secret, reply, ts, 43, aead_nonce).hex(),
        reply_frame,
    )
    # Opening vector 2 as w1 gives its body back (the clock check is the reader's own).
    jobcast.MAX_SKEW_MS = 1 << 62
    check(
        "vector 2 opens as w1",
        jobcast.open_frame(bytes.fromhex(reply_frame), "w1", secret),
        reply,
    )
    print(f"{5 + 1 - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
