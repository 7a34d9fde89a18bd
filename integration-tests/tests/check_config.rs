//! `jobcast-broker --check-config`: settings checked without touching a store or a port.

use jobcast_integration_tests::{bin, say_skipped};
use std::process::Command;

fn check(config: &std::path::Path, jobs: Option<&std::path::Path>) -> std::process::Output {
    let mut command = Command::new(bin("jobcast-broker"));
    command.arg("--config").arg(config).arg("--check-config");
    if let Some(jobs) = jobs {
        command.arg("--jobs").arg(jobs);
    }
    command.output().expect("run jobcast-broker")
}

#[test]
fn the_shipped_config_checks_and_a_broken_one_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/broker.toml");
    // The example's data_dir is relative: a check creates nothing there.
    let out = Command::new(bin("jobcast-broker"))
        .current_dir(dir.path())
        .args(["--config", example, "--check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config is valid"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "worker_timeout = \"soon\"\n").unwrap();
    let out = check(&broken, None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("worker_timeout"),
        "{out:?}"
    );

    // A log level that is not one is refused, by the broker and by the worker alike.
    let out = Command::new(bin("jobcast-broker"))
        .current_dir(dir.path())
        .args([
            "--config",
            example,
            "--check-config",
            "--log-level",
            "verbose",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"verbose\" is not a level"),
        "{out:?}"
    );
    let out = Command::new(bin("jobcast-worker"))
        .args(["--id", "w1", "--secret", "a-worker-secret-of-some-length"])
        .args(["--check-config", "--log-level", "verbose"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"verbose\" is not a level"),
        "{out:?}"
    );

    // A jobs file is checked too.
    let jobs = dir.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        "[jobs.x]\nscript = \"no shebang\"\nevery = \"often\"\n",
    )
    .unwrap();
    let out = check(std::path::Path::new(example), Some(&jobs));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("jobs.toml"),
        "{out:?}"
    );
}

#[test]
fn each_program_says_which_commit_it_was_built_from() {
    let Some(head) = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    else {
        say_skipped("not built from a git checkout");
        return;
    };
    for program in ["jobcast-broker", "jobcast-worker", "jobcastctl"] {
        let out = Command::new(bin(program))
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{program}: {text}");
        assert!(
            text.starts_with(&format!("{program} {}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("({head})")),
            "{program}: {text} (HEAD {head})"
        );
    }
}

#[test]
fn a_postgres_store_is_checked_without_connecting_and_its_password_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pg-password");
    std::fs::write(&password, "hunter2-of-the-database\n").unwrap();
    let config = dir.path().join("broker.toml");
    let write = |postgres: &str| {
        std::fs::write(
            &config,
            format!("{postgres}\n[keys]\nadmin = \"an-admin-secret-long-enough\"\n"),
        )
        .unwrap()
    };
    // Nothing listens there: a check does not connect.
    write(&format!(
        "[postgres]\nurl = \"postgres://jobcast@127.0.0.1:9/jobs\"\npassword_file = \"{}\"",
        password.display()
    ));
    let out = check(&config, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("store postgres://jobcast@127.0.0.1:9/jobs"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");

    write("[postgres]\nurl = \"postgres://jobcast@db/jobs\"\npassword_file = \"/nonexistent/pw\"");
    let out = check(&config, None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[postgres]") && stderr.contains("/nonexistent/pw"),
        "{stderr}"
    );

    write("[postgres]\nurl = \"postgres://jobcast:inline-secret@db:notaport/jobs\"");
    let out = check(&config, None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("URL cannot be read"), "{stderr}");
    assert!(!stderr.contains("inline-secret"), "{stderr}");
}
