//! Property tests of the jobs-file parser (the same input space as the `jobfile_parse`
//! fuzz target, run in CI): any text gives jobs or a clear error, never a panic, and
//! whatever parses passes validation.

use jobcast_protocol::jobfile::{parse, validate};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../examples/jobs.toml");

fn parses_cleanly(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(jobs) => {
            for job in &jobs {
                prop_assert!(validate(job).is_ok(), "{job:?}");
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        parses_cleanly(&text)?;
    }

    #[test]
    fn the_example_file_with_bytes_changed_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<char>()), 1..6),
    ) {
        let mut chars: Vec<char> = EXAMPLE.chars().collect();
        for (at, c) in edits {
            let at = at % chars.len();
            chars[at] = c;
        }
        parses_cleanly(&chars.into_iter().collect::<String>())?;
    }

    #[test]
    fn generated_jobs_parse_or_explain_themselves(
        name in "[a-z0-9_.-]{0,70}",
        pool in "[a-z ]{0,10}",
        every in prop_oneof![Just("30s".to_string()), Just("0s".to_string()), "[0-9a-z]{0,6}"],
        cron in "[0-9*/, -]{0,20}",
        timeout in "[0-9]{0,4}(ms|s|m|h|x)?",
        script in prop_oneof![Just("#!/bin/sh\necho hi\n".to_string()), ".{0,30}"],
    ) {
        let text = format!(
            "[jobs.\"{name}\"]\npool = {pool:?}\nevery = {every:?}\ncron = {cron:?}\n\
             timeout = {timeout:?}\nscript = {script:?}\n"
        );
        parses_cleanly(&text)?;
    }
}

#[test]
fn the_example_file_parses() {
    assert!(!parse(EXAMPLE).expect("examples/jobs.toml").is_empty());
}
