//! The `jobs.toml` format: parsing and validation into [`JobSpec`]s.
//!
//! ```toml
//! [jobs.backup]
//! pool = "default"            # optional, default "default"
//! script = """#!/bin/sh
//! pg_dump mydb > /backups/mydb.sql
//! """
//! env = { PGHOST = "db1" }    # optional
//! workdir = "/var/backups"    # optional
//! timeout = "30m"             # optional, humantime
//! enabled = true              # optional, default true
//!
//! [jobs.rotate]
//! command = ["logrotate", "/etc/logrotate.conf"]   # or a string, run by /bin/sh -c
//! ```

use crate::message::{Exec, JobSpec};
use crate::names;
use serde::Deserialize;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobFileError {
    #[error("not valid jobs TOML: {0}")]
    Toml(String),
    #[error("job {job:?}: {problem}")]
    Job { job: String, problem: String },
    #[error("the file defines no jobs: add a [jobs.NAME] table")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    jobs: BTreeMap<String, JobEntry>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CommandEntry {
    Shell(String),
    Argv(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    pool: Option<String>,
    script: Option<String>,
    command: Option<CommandEntry>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    workdir: Option<String>,
    timeout: Option<String>,
    enabled: Option<bool>,
}

pub const DEFAULT_POOL: &str = "default";

/// Parses a whole jobs file. Every problem names the job and what to fix.
pub fn parse(text: &str) -> Result<Vec<JobSpec>, JobFileError> {
    let file: File = toml::from_str(text).map_err(|e| JobFileError::Toml(e.to_string()))?;
    if file.jobs.is_empty() {
        return Err(JobFileError::Empty);
    }
    file.jobs
        .into_iter()
        .map(|(name, entry)| {
            to_spec(&name, entry).map_err(|problem| JobFileError::Job { job: name, problem })
        })
        .collect()
}

fn to_spec(name: &str, entry: JobEntry) -> Result<JobSpec, String> {
    names::validate("job name", name).map_err(|e| e.to_string())?;
    let pool = entry.pool.unwrap_or_else(|| DEFAULT_POOL.to_string());
    names::validate("pool", &pool).map_err(|e| e.to_string())?;
    let exec = match (entry.script, entry.command) {
        (Some(script), None) => Exec::Script(script),
        (None, Some(CommandEntry::Shell(line))) => {
            Exec::Command(vec!["/bin/sh".into(), "-c".into(), line])
        }
        (None, Some(CommandEntry::Argv(argv))) => Exec::Command(argv),
        (Some(_), Some(_)) => return Err("has both `script` and `command`: keep one".into()),
        (None, None) => return Err("needs a `script` (a #! script body) or a `command`".into()),
    };
    let timeout_ms = match entry.timeout {
        Some(text) => {
            let d = humantime::parse_duration(&text).map_err(|e| {
                format!("timeout {text:?} is not a duration like \"30s\" or \"10m\": {e}")
            })?;
            if d.is_zero() {
                return Err("timeout must be longer than zero (leave it out for none)".into());
            }
            Some(d.as_millis() as u64)
        }
        None => None,
    };
    let spec = JobSpec {
        name: name.to_string(),
        pool,
        exec,
        env: entry.env,
        workdir: entry.workdir,
        timeout_ms,
        enabled: entry.enabled.unwrap_or(true),
    };
    validate(&spec)?;
    Ok(spec)
}

/// Checks a job however it arrived (file or network).
pub fn validate(spec: &JobSpec) -> Result<(), String> {
    names::validate("job name", &spec.name).map_err(|e| e.to_string())?;
    names::validate("pool", &spec.pool).map_err(|e| e.to_string())?;
    match &spec.exec {
        Exec::Script(body) if !body.starts_with("#!") => {
            return Err(
                "script must start with a #! line naming its interpreter, e.g. #!/bin/sh".into(),
            )
        }
        Exec::Script(body)
            if body.lines().next().map(|l| l[2..].trim().is_empty()) == Some(true) =>
        {
            return Err("script's #! line names no interpreter".into())
        }
        Exec::Command(argv) if argv.is_empty() || argv[0].is_empty() => {
            return Err("command is empty".into())
        }
        _ => {}
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("env name {key:?} is not a valid variable name"));
        }
    }
    if spec.env.values().any(|v| v.contains('\0')) {
        return Err("env values cannot contain NUL bytes".into());
    }
    if let Some(dir) = &spec.workdir {
        if dir.is_empty() {
            return Err("workdir is empty: leave it out to use the worker's".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scripts_and_commands() {
        let jobs = parse(
            r##"
[jobs.hello]
script = "#!/bin/sh\necho hi\n"
timeout = "1m30s"
env = { A = "1" }

[jobs.rotate]
pool = "ops"
command = "logrotate /etc/lr.conf"
enabled = false

[jobs.argv]
command = ["echo", "a b"]
"##,
        )
        .unwrap();
        assert_eq!(jobs.len(), 3);
        let hello = jobs.iter().find(|j| j.name == "hello").unwrap();
        assert_eq!(hello.timeout_ms, Some(90_000));
        assert_eq!(hello.pool, "default");
        assert!(hello.enabled);
        let rotate = jobs.iter().find(|j| j.name == "rotate").unwrap();
        assert_eq!(
            rotate.exec,
            Exec::Command(vec![
                "/bin/sh".into(),
                "-c".into(),
                "logrotate /etc/lr.conf".into()
            ])
        );
        assert!(!rotate.enabled);
        let argv = jobs.iter().find(|j| j.name == "argv").unwrap();
        assert_eq!(argv.exec, Exec::Command(vec!["echo".into(), "a b".into()]));
    }

    fn problem(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn explains_what_is_wrong() {
        assert!(problem("[jobs.a]\nscirpt = \"x\"").contains("unknown field `scirpt`"));
        assert!(problem("[jobs.a]\nscript = \"echo hi\"").contains("#!"));
        assert!(problem("[jobs.a]\n").contains("needs a `script`"));
        assert!(problem("[jobs.a]\nscript=\"#!/bin/sh\"\ncommand=\"x\"").contains("both"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\ntimeout=\"soon\"").contains("timeout \"soon\""));
        assert!(problem("[jobs.\"a b\"]\ncommand=\"x\"").contains("invalid job name"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\npool=\"p/1\"").contains("invalid pool"));
        assert!(problem("").contains("defines no jobs"));
        assert!(problem("[jobs.a\n").contains("not valid jobs TOML"));
        assert!(problem("[jobs.a]\ncommand=[]").contains("command is empty"));
        assert!(problem("[jobs.a]\nscript=\"#!\\necho\"").contains("names no interpreter"));
    }
}
