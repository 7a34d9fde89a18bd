//! The `jobs.toml` format: parsing and validation into [`JobSpec`]s.
//!
//! ```toml
//! [jobs.backup]
//! pool = "default"            # optional, default "default"
//! script = """#!/bin/sh
//! pg_dump mydb > /backups/mydb.sql
//! """
//! env = { PGHOST = "db1" }    # optional
//! worker_env = ["PGPASSWORD"] # optional: filled by the worker; only names leave it
//! workdir = "/var/backups"    # optional
//! timeout = "30m"             # optional, humantime
//! enabled = true              # optional, default true
//!
//! [jobs.rotate]
//! command = ["logrotate", "/etc/logrotate.conf"]   # or a string, run by /bin/sh -c
//! ```

use crate::message::{ChildSpec, Exec, JobPolicy, JobSpec, Misfire, Overlap, ScheduleSpec};
use crate::names::{self, InvalidName};
use serde::Deserialize;
use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobFileError {
    #[error("not valid jobs TOML: {0}")]
    Toml(String),
    #[error("job {job:?}: {problem}")]
    Job { job: String, problem: JobProblem },
    #[error("the file defines no jobs: add a [jobs.NAME] table")]
    Empty,
}

/// What is wrong with one job, however it arrived (file or network).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobProblem {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error("has both `script` and `command`: keep one")]
    ScriptAndCommand,
    #[error("needs a `script` (a #! script body) or a `command`")]
    NoScriptOrCommand,
    #[error("{field} {text:?} is not a duration like \"30s\" or \"10m\": {reason}")]
    NotADuration {
        field: &'static str,
        text: String,
        reason: String,
    },
    #[error("{field} must be longer than zero")]
    ZeroDuration { field: &'static str },
    #[error("script must start with a #! line naming its interpreter, e.g. #!/bin/sh")]
    NoShebang,
    #[error("script's #! line names no interpreter")]
    NoInterpreter,
    #[error("command is empty")]
    EmptyCommand,
    #[error("{field} name {key:?} is not a valid variable name")]
    BadVariableName { field: &'static str, key: String },
    #[error("env values cannot contain NUL bytes")]
    NulInEnvValue,
    #[error("{key} is in both env and worker_env: a secret filled by the worker must not also be stored")]
    SecretAlsoStored { key: String },
    #[error("choose one of `cron`, `every` and `at`")]
    SeveralSchedules,
    #[error("`timezone` and `exclude` need a schedule (`cron`, `every` or `at`)")]
    NeedsSchedule,
    #[error("a job cannot be its own child")]
    OwnChild,
    #[error("disable_after_failures must be at least 1")]
    DisableAfterZero,
    #[error("max_concurrent must be at least 1")]
    MaxConcurrentZero,
    #[error("memory_max {text:?} is not a size: a number of bytes, or with K, M or G (1024-based), at least 1M")]
    NotASize { text: String },
    #[error("cpus must be more than 0 and at most 1024 (1.5 is one and a half CPUs)")]
    BadCpus,
    #[error("workdir is empty: leave it out to use the worker's")]
    EmptyWorkdir,
    #[error(transparent)]
    Param(#[from] crate::params::ParamError),
    #[error("parameter {name:?} is required, but a scheduled run has no one to give it: give it a default instead")]
    ScheduledRequiredParam { name: String },
    #[error(transparent)]
    Priority(#[from] crate::job::PriorityError),
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
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChildEntry {
    Name(String),
    Full {
        job: String,
        #[serde(default)]
        on_error: bool,
    },
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum BackoffKind {
    Fixed,
    Exponential,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    pool: Option<String>,
    script: Option<String>,
    command: Option<CommandEntry>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    worker_env: Vec<String>,
    workdir: Option<String>,
    timeout: Option<String>,
    enabled: Option<bool>,
    cron: Option<OneOrMany>,
    timezone: Option<String>,
    every: Option<String>,
    at: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    overlap: Option<Overlap>,
    misfire: Option<Misfire>,
    max_catchup: Option<u32>,
    starting_deadline: Option<String>,
    retries: Option<u32>,
    retry_backoff: Option<String>,
    retry_backoff_kind: Option<BackoffKind>,
    #[serde(default)]
    children: Vec<ChildEntry>,
    run_on_all_workers: Option<bool>,
    disable_after_failures: Option<u32>,
    late_after: Option<String>,
    retention: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, crate::params::ParamSpec>,
    priority: Option<PriorityEntry>,
    max_concurrent: Option<u32>,
    on_broker_loss: Option<crate::job::OnBrokerLoss>,
    memory_max: Option<SizeEntry>,
    cpus: Option<f64>,
    #[serde(default)]
    tags: Vec<String>,
    team: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeEntry {
    Bytes(u64),
    Text(String),
}

/// A size as written in a jobs file: bytes, or a number with K, M or G (powers of 1024).
fn size_bytes(entry: SizeEntry) -> Result<u64, JobProblem> {
    let text = match entry {
        SizeEntry::Bytes(bytes) => bytes.to_string(),
        SizeEntry::Text(text) => text,
    };
    let problem = || JobProblem::NotASize { text: text.clone() };
    let trimmed = text.trim();
    let (number, unit) = match trimmed
        .char_indices()
        .find(|(_, c)| c.is_ascii_alphabetic())
    {
        Some((at, _)) => (&trimmed[..at], trimmed[at..].trim()),
        None => (trimmed, ""),
    };
    let factor: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(problem()),
    };
    let bytes = number
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(problem)?;
    if bytes < 1 << 20 {
        return Err(problem());
    }
    Ok(bytes)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PriorityEntry {
    Number(i32),
    Name(String),
}

fn duration_ms(field: &'static str, text: &str) -> Result<u64, JobProblem> {
    let d = humantime::parse_duration(text).map_err(|e| JobProblem::NotADuration {
        field,
        text: text.to_string(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(JobProblem::ZeroDuration { field });
    }
    Ok(d.as_millis() as u64)
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

fn to_spec(name: &str, entry: JobEntry) -> Result<JobSpec, JobProblem> {
    names::validate("job name", name)?;
    let pool = entry.pool.unwrap_or_else(|| DEFAULT_POOL.to_string());
    names::validate("pool", &pool)?;
    let exec = match (entry.script, entry.command) {
        (Some(script), None) => Exec::Script(script),
        (None, Some(CommandEntry::Shell(line))) => {
            Exec::Command(vec!["/bin/sh".into(), "-c".into(), line])
        }
        (None, Some(CommandEntry::Argv(argv))) => Exec::Command(argv),
        (Some(_), Some(_)) => return Err(JobProblem::ScriptAndCommand),
        (None, None) => return Err(JobProblem::NoScriptOrCommand),
    };
    let timeout_ms = entry
        .timeout
        .map(|t| duration_ms("timeout", &t))
        .transpose()?;
    let cron = match entry.cron {
        None => Vec::new(),
        Some(OneOrMany::One(expr)) => vec![expr],
        Some(OneOrMany::Many(exprs)) => exprs,
    };
    let schedule = ScheduleSpec {
        cron,
        timezone: entry.timezone,
        every_ms: entry.every.map(|e| duration_ms("every", &e)).transpose()?,
        at: entry.at,
        exclude: entry.exclude,
    };
    let defaults = JobPolicy::default();
    let policy = JobPolicy {
        overlap: entry.overlap.unwrap_or_default(),
        misfire: entry.misfire.unwrap_or_default(),
        max_catchup: entry.max_catchup.unwrap_or(defaults.max_catchup),
        starting_deadline_ms: entry
            .starting_deadline
            .map(|d| duration_ms("starting_deadline", &d))
            .transpose()?,
        retries: entry.retries.unwrap_or(0),
        retry_backoff_ms: entry
            .retry_backoff
            .map(|d| duration_ms("retry_backoff", &d))
            .transpose()?
            .unwrap_or(defaults.retry_backoff_ms),
        retry_exponential: matches!(entry.retry_backoff_kind, Some(BackoffKind::Exponential)),
        children: entry
            .children
            .into_iter()
            .map(|c| match c {
                ChildEntry::Name(job) => ChildSpec {
                    job,
                    on_error: false,
                },
                ChildEntry::Full { job, on_error } => ChildSpec { job, on_error },
            })
            .collect(),
        run_on_all_workers: entry.run_on_all_workers.unwrap_or(false),
        disable_after_failures: entry.disable_after_failures,
        late_after_ms: entry
            .late_after
            .map(|d| duration_ms("late_after", &d))
            .transpose()?
            .unwrap_or(defaults.late_after_ms),
        retention_ms: entry
            .retention
            .map(|d| duration_ms("retention", &d))
            .transpose()?,
        max_concurrent: entry.max_concurrent,
        on_broker_loss: entry.on_broker_loss.unwrap_or_default(),
    };
    let spec = JobSpec {
        name: name.to_string(),
        pool,
        exec,
        env: entry.env,
        worker_env: entry.worker_env,
        workdir: entry.workdir,
        timeout_ms,
        enabled: entry.enabled.unwrap_or(true),
        schedule,
        policy,
        params: entry.params,
        priority: match entry.priority {
            None => 0,
            Some(PriorityEntry::Number(n)) => n,
            Some(PriorityEntry::Name(name)) => {
                crate::job::parse_priority(&name).map_err(JobProblem::Priority)?
            }
        },
        tags: entry.tags,
        team: entry.team,
        memory_max: entry.memory_max.map(size_bytes).transpose()?,
        cpus_milli: entry
            .cpus
            .map(|cpus| {
                if cpus > 0.0 && cpus <= 1024.0 {
                    Ok((cpus * 1000.0).round().max(1.0) as u32)
                } else {
                    Err(JobProblem::BadCpus)
                }
            })
            .transpose()?,
    };
    validate(&spec)?;
    Ok(spec)
}

/// Checks a job however it arrived (file or network).
pub fn validate(spec: &JobSpec) -> Result<(), JobProblem> {
    names::validate("job name", &spec.name)?;
    names::validate("pool", &spec.pool)?;
    match &spec.exec {
        Exec::Script(body) if !body.starts_with("#!") => return Err(JobProblem::NoShebang),
        Exec::Script(body)
            if body.lines().next().map(|l| l[2..].trim().is_empty()) == Some(true) =>
        {
            return Err(JobProblem::NoInterpreter)
        }
        Exec::Command(argv) if argv.is_empty() || argv[0].is_empty() => {
            return Err(JobProblem::EmptyCommand)
        }
        _ => {}
    }
    let bad_name = |key: &str| key.is_empty() || key.contains('=') || key.contains('\0');
    if let Some(key) = spec.env.keys().find(|k| bad_name(k)) {
        return Err(JobProblem::BadVariableName {
            field: "env",
            key: key.clone(),
        });
    }
    if spec.env.values().any(|v| v.contains('\0')) {
        return Err(JobProblem::NulInEnvValue);
    }
    for key in &spec.worker_env {
        if bad_name(key) {
            return Err(JobProblem::BadVariableName {
                field: "worker_env",
                key: key.clone(),
            });
        }
        if spec.env.contains_key(key) {
            return Err(JobProblem::SecretAlsoStored { key: key.clone() });
        }
    }
    let kinds = [
        !spec.schedule.cron.is_empty(),
        spec.schedule.every_ms.is_some(),
        spec.schedule.at.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(JobProblem::SeveralSchedules);
    }
    if spec.schedule.is_manual()
        && (spec.schedule.timezone.is_some() || !spec.schedule.exclude.is_empty())
    {
        return Err(JobProblem::NeedsSchedule);
    }
    for child in &spec.policy.children {
        names::validate("child job", &child.job)?;
        if child.job == spec.name {
            return Err(JobProblem::OwnChild);
        }
    }
    if spec.policy.disable_after_failures == Some(0) {
        return Err(JobProblem::DisableAfterZero);
    }
    if spec.policy.max_concurrent == Some(0) {
        return Err(JobProblem::MaxConcurrentZero);
    }
    if spec.workdir.as_deref() == Some("") {
        return Err(JobProblem::EmptyWorkdir);
    }
    crate::params::check_declarations(&spec.params)?;
    crate::job::check_priority(spec.priority).map_err(JobProblem::Priority)?;
    for tag in &spec.tags {
        names::validate("tag", tag)?;
    }
    if let Some(team) = &spec.team {
        names::validate("team", team)?;
    }
    if !spec.schedule.is_manual() {
        if let Some((name, _)) = spec.params.iter().find(|(_, p)| p.required) {
            return Err(JobProblem::ScheduledRequiredParam { name: name.clone() });
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

    #[test]
    fn parses_schedules_and_policies() {
        let jobs = parse(
            r##"
[jobs.nightly]
command = "true"
cron = ["0 2 * * *", "@hourly"]
timezone = "Europe/Amsterdam"
exclude = ["22:00-06:00"]
overlap = "queue"
misfire = "once"
retries = 3
retry_backoff = "30s"
retry_backoff_kind = "exponential"
children = ["report", { job = "cleanup", on_error = true }]
disable_after_failures = 5
starting_deadline = "5m"
retention = "7d"

[jobs.often]
command = "true"
every = "90s"
run_on_all_workers = true
on_broker_loss = "keep"
memory_max = "512M"
cpus = 1.5
"##,
        )
        .unwrap();
        let nightly = jobs.iter().find(|j| j.name == "nightly").unwrap();
        assert_eq!(nightly.schedule.cron.len(), 2);
        assert_eq!(
            nightly.schedule.timezone.as_deref(),
            Some("Europe/Amsterdam")
        );
        assert_eq!(nightly.policy.overlap, Overlap::Queue);
        assert_eq!(
            nightly.policy.on_broker_loss,
            crate::job::OnBrokerLoss::Stop,
            "stop unless the job says keep"
        );
        let often = jobs.iter().find(|j| j.name == "often").unwrap();
        assert_eq!(often.policy.on_broker_loss, crate::job::OnBrokerLoss::Keep);
        assert_eq!(often.memory_max, Some(512 << 20));
        assert_eq!(often.cpus_milli, Some(1_500));
        assert_eq!(nightly.memory_max, None);
        for (bad, says) in [
            ("memory_max = \"lots\"", "not a size"),
            ("memory_max = 1000", "not a size"),
            ("memory_max = \"2T\"", "not a size"),
            ("cpus = 0", "cpus must be"),
            ("cpus = -1.0", "cpus must be"),
        ] {
            let text = problem(&format!("[jobs.a]\ncommand=\"x\"\n{bad}"));
            assert!(text.contains(says), "{bad}: {text}");
        }
        let g = parse("[jobs.a]\ncommand=\"x\"\nmemory_max = \"2GiB\"").unwrap();
        assert_eq!(g[0].memory_max, Some(2 << 30));
        assert_eq!(nightly.policy.misfire, Misfire::Once);
        assert_eq!(nightly.policy.retry_backoff_ms, 30_000);
        assert!(nightly.policy.retry_exponential);
        assert_eq!(
            nightly.policy.children[1],
            ChildSpec {
                job: "cleanup".into(),
                on_error: true
            }
        );
        assert_eq!(nightly.policy.starting_deadline_ms, Some(300_000));
        assert_eq!(nightly.policy.retention_ms, Some(7 * 86_400_000));
        let often = jobs.iter().find(|j| j.name == "often").unwrap();
        assert_eq!(often.schedule.every_ms, Some(90_000));
        assert!(often.policy.run_on_all_workers);
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
        assert!(
            problem("[jobs.a]\ncommand=\"x\"\ncron=\"* * * * *\"\nevery=\"1m\"").contains("one of")
        );
        assert!(problem("[jobs.a]\ncommand=\"x\"\nevery=\"0s\"").contains("longer than zero"));
        assert!(
            problem("[jobs.a]\ncommand=\"x\"\noverlap=\"sometimes\"").contains("unknown variant")
        );
        assert!(problem("[jobs.a]\ncommand=\"x\"\nchildren=[\"a\"]").contains("own child"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\ntimezone=\"UTC\"").contains("need a schedule"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\nretention=\"0s\"").contains("longer than zero"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\npriority=\"urgent\"")
            .contains("not a number, high, normal or low"));
        assert!(problem("[jobs.a]\ncommand=\"x\"\npriority=101").contains("outside -100 to 100"));
        assert!(
            problem("[jobs.a]\ncommand=\"x\"\nparams.x={type=\"integer\",default=\"1.5\"}")
                .contains("is not an integer")
        );
        assert!(problem("[jobs.a]\ncommand=\"x\"\nparams.x={type=\"text\"}")
            .contains("unknown variant"));
    }

    #[test]
    fn priorities_and_parameters_are_read() {
        let jobs = parse(
            "[jobs.a]\ncommand=\"x\"\npriority=\"high\"\n\
             params.day={type=\"string\",default=\"today\",description=\"which day\"}\n\
             [jobs.b]\ncommand=\"x\"\npriority=-5\n",
        )
        .unwrap();
        assert_eq!((jobs[0].priority, jobs[1].priority), (10, -5));
        assert_eq!(jobs[0].params["day"].default.as_deref(), Some("today"));
        assert_eq!(jobs[0].params["day"].kind, crate::params::ParamType::String);
        let tagged = parse("[jobs.a]\ncommand=\"x\"\ntags=[\"nightly\",\"db\"]\n").unwrap();
        assert_eq!(tagged[0].tags, ["nightly", "db"]);
        assert!(parse("[jobs.a]\ncommand=\"x\"\ntags=[\"a b\"]\n")
            .unwrap_err()
            .to_string()
            .contains("tag"));
    }
}
