//! The man pages in docs/man are generated from the programs' command-line definitions
//! (`--generate-man DIR`, `jobcastctl generate-man DIR`) and must match them: a flag
//! added without regenerating the pages fails here. To regenerate:
//! `JOBCAST_UPDATE_MAN=1 cargo test -p jobcast-integration-tests --test man_pages`.

use jobcast_integration_tests::bin;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn pages(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .expect("read man directory")
        .map(|entry| {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("read page");
            (name, text)
        })
        .collect()
}

#[test]
fn the_committed_man_pages_match_the_programs() {
    let fresh = tempfile::tempdir().expect("temp dir");
    let dir = fresh.path().to_str().expect("utf-8 path");
    for (program, args) in [
        ("jobcast-broker", vec!["--generate-man", dir]),
        ("jobcast-worker", vec!["--generate-man", dir]),
        ("jobcastctl", vec!["generate-man", dir]),
    ] {
        let out = Command::new(bin(program))
            .args(&args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{program}: {out:?}");
    }
    let generated = pages(fresh.path());
    for program in [
        "jobcast-broker.1",
        "jobcast-worker.1",
        "jobcastctl.1",
        "jobcastctl-reload.1",
    ] {
        assert!(
            generated.contains_key(program),
            "{program} not generated: {:?}",
            generated.keys()
        );
    }
    assert!(
        generated.values().all(|page| page.contains("\n.TH ")),
        "not roff pages"
    );

    let committed_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man");
    if std::env::var("JOBCAST_UPDATE_MAN").as_deref() == Ok("1") {
        let _ = std::fs::remove_dir_all(&committed_dir);
        std::fs::create_dir_all(&committed_dir).expect("create docs/man");
        for (name, text) in &generated {
            std::fs::write(committed_dir.join(name), text).expect("write page");
        }
    }
    let committed = pages(&committed_dir);
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        generated.keys().collect::<Vec<_>>(),
        "docs/man is out of date: regenerate it (see this file's header)"
    );
    for (name, text) in &generated {
        assert!(
            committed[name] == *text,
            "docs/man/{name} is out of date: regenerate it (see this file's header)"
        );
    }
}
