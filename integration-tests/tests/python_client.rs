//! The Python client of `examples/python/`, written from `docs/PROTOCOL.md` alone, checks
//! the document's test vectors and works against a real broker as an operator and as a
//! worker. Without python3 and its packages (pyzmq, msgpack, PyNaCl) the test says it was
//! skipped, except under CI, where `.ci/run` installs them and a skip is a failure.

use jobcast_integration_tests::*;
use std::path::PathBuf;
use std::process::Command;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("python")
}

/// Whether python3 with the client's packages is here.
fn python_ready() -> bool {
    let ready = Command::new("python3")
        .args(["-c", "import zmq, msgpack, nacl"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with pyzmq, msgpack and PyNaCl is missing; .ci/run installs them"
        );
        say_skipped("python3 with pyzmq, msgpack and PyNaCl is not installed");
    }
    ready
}

fn check(output: std::process::Output) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn the_python_client_matches_the_documents_test_vectors() {
    if !python_ready() {
        return;
    }
    check(
        Command::new("python3")
            .arg("test_vectors.py")
            .current_dir(examples())
            .output()
            .expect("run python3"),
    );
}

#[test]
fn the_python_client_works_as_operator_and_worker() {
    if !python_ready() {
        return;
    }
    let cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.py-hello]\npool = \"python\"\nscript = \"\"\"#!/bin/sh\necho hello from python\n\"\"\"\n\
         [jobs.py-parked]\npool = \"parked\"\ncommand = \"true\"\n",
    );
    check(
        Command::new("python3")
            .arg("interop.py")
            .args(["--router", &cluster.router, "--publish", &cluster.publish])
            .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
            .env("JOBCAST_WORKER_SECRET", worker_secret("w1"))
            .current_dir(examples())
            .output()
            .expect("run python3"),
    );
}
