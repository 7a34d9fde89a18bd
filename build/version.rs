//! Build script shared by the three programs (each Cargo.toml names it): puts what
//! `--version` prints, the release and the commit they are built from, into
//! `JOBCAST_VERSION_LONG`, so that it says which build runs. Outside a git checkout (a
//! source tarball) the commit is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    // Local changes on top of the commit are not told apart (watching the index would
    // rebuild the programs on every `git add`).
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let release = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=JOBCAST_VERSION_LONG={release} ({commit})");
    // Built again when the checkout moves to another commit.
    for path in ["HEAD", "refs", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
