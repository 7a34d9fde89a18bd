//! Variables a job asks the worker to fill (`worker_env` in the job), so that secrets stay
//! on the worker's host: the broker stores and sends only their names.
//!
//! The worker fills only the names its own configuration lists, each from its own
//! environment or from a file read when the run starts (so a rotated secret is picked up
//! without a restart). A job cannot reach anything else of the worker's environment, such
//! as the worker's own key.

use crate::start_error::StartError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where one variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Source {
    /// This variable of the worker's own environment.
    Env(String),
    /// This file's contents, without a trailing newline.
    File(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    /// `env:NAME` or `file:/path`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            Some(("env", name)) if !name.is_empty() => Ok(Source::Env(name.to_string())),
            Some(("file", path)) if !path.is_empty() => Ok(Source::File(path.into())),
            _ => Err(format!(
                "{text:?} is not a source: use env:NAME or file:/path"
            )),
        }
    }
}

/// Parses a `--worker-env` flag: `NAME` (from the variable of the same name), or
/// `NAME=env:OTHER`, or `NAME=file:/path`.
pub fn parse_flag(flag: &str) -> Result<(String, Source), String> {
    let (name, source) = match flag.split_once('=') {
        Some((name, source)) => (name, source.parse()?),
        None => (flag, Source::Env(flag.to_string())),
    };
    if name.is_empty() || name.contains('\0') {
        return Err(format!("{flag:?} names no variable"));
    }
    Ok((name.to_string(), source))
}

/// The values of `names` for a run on `worker`, or why one is missing.
pub fn fill(
    names: &[String],
    sources: &BTreeMap<String, Source>,
    worker: &str,
) -> Result<Vec<(String, String)>, StartError> {
    names
        .iter()
        .map(|name| {
            let source = sources.get(name).ok_or_else(|| StartError::NotProvided {
                name: name.clone(),
                worker: worker.to_string(),
            })?;
            let value = match source {
                Source::Env(var) => std::env::var(var).map_err(|_| StartError::VariableUnset {
                    name: name.clone(),
                    worker: worker.to_string(),
                    var: var.clone(),
                })?,
                Source::File(path) => std::fs::read_to_string(path)
                    .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|source| StartError::Unreadable {
                        name: name.clone(),
                        worker: worker.to_string(),
                        path: path.clone(),
                        source,
                    })?,
            };
            if value.contains('\0') {
                return Err(StartError::NulInValue { name: name.clone() });
            }
            Ok((name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_a_variable_and_where_it_comes_from() {
        assert_eq!(
            parse_flag("PGPASSWORD").unwrap(),
            ("PGPASSWORD".into(), Source::Env("PGPASSWORD".into()))
        );
        assert_eq!(
            parse_flag("PGPASSWORD=env:DB_PASS").unwrap(),
            ("PGPASSWORD".into(), Source::Env("DB_PASS".into()))
        );
        assert_eq!(
            parse_flag("TOKEN=file:/etc/jobcast/token").unwrap(),
            ("TOKEN".into(), Source::File("/etc/jobcast/token".into()))
        );
        assert!(parse_flag("TOKEN=vault:x").is_err());
        assert!(parse_flag("=env:X").is_err());
    }

    #[test]
    fn only_listed_names_are_filled() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let sources = BTreeMap::from([
            ("TOKEN".to_string(), Source::File(file)),
            ("HOME_DIR".to_string(), Source::Env("HOME".to_string())),
        ]);
        let filled = fill(&["TOKEN".into()], &sources, "w1").unwrap();
        assert_eq!(filled, vec![("TOKEN".to_string(), "s3cret".to_string())]);
        // The worker's own environment is not open to jobs: PATH is set, but not listed.
        let err = fill(&["PATH".into()], &sources, "w1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not provide it"), "{err}");
        let missing =
            BTreeMap::from([("GONE".to_string(), Source::File(dir.path().join("absent")))]);
        let err = fill(&["GONE".into()], &missing, "w1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot be read"), "{err}");
    }
}
