//! What the broker and the worker share about the place they run in, apart from the
//! protocol: how they log (level, text or JSON lines, colour only on a terminal).

use serde::Deserialize;
use std::io::IsTerminal;
use std::str::FromStr;
use thiserror::Error;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event (coloured when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, with the event's fields: for log collectors.
    Json,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LogError {
    #[error("unknown log format {0:?}: use \"text\" or \"json\"")]
    UnknownFormat(String),
    #[error("invalid log level {level:?}: {reason}")]
    BadLevel { level: String, reason: String },
    #[error("logging was set up already")]
    AlreadySet,
}

impl FromStr for LogFormat {
    type Err = LogError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(LogError::UnknownFormat(other.to_string())),
        }
    }
}

/// The levels a log filter may name.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Checks a log filter: a level (`info`), or levels by module (`warn,jobcast_broker=debug`).
/// A bare word that is not a level is refused: the filter syntax would read `verbose` as
/// the name of a module and log everything of it, which is never what was meant.
pub fn check_log_level(level: &str) -> Result<(), LogError> {
    let bad = |reason: String| LogError::BadLevel {
        level: level.to_string(),
        reason,
    };
    for directive in level.split(',').map(str::trim) {
        let named = match directive.split_once('=') {
            Some((target, named)) if !target.is_empty() => named,
            Some(_) => return Err(bad(format!("{directive:?} names no module"))),
            None => directive,
        };
        if !LEVELS.contains(&named.to_ascii_lowercase().as_str()) {
            return Err(bad(format!(
                "{named:?} is not a level: use {}",
                LEVELS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Sends the process's log events at `level` (a filter such as `info` or
/// `warn,jobcast_broker=debug`) to stderr in `format`.
pub fn init_logging(level: &str, format: LogFormat) -> Result<(), LogError> {
    check_log_level(level)?;
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| LogError::BadLevel {
        level: level.to_string(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let set = match format {
        // Colour codes only where a person reads them; files and journals get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    set.map_err(|_| LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_named_and_anything_else_is_refused_by_name() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!(
            "xml".parse::<LogFormat>(),
            Err(LogError::UnknownFormat("xml".into()))
        );
    }

    #[test]
    fn levels_and_levels_by_module_are_taken_and_other_words_refused() {
        for good in [
            "info",
            "WARN",
            "off",
            "warn,jobcast_broker=debug",
            "a=trace, b=error",
        ] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "info,verbose", "jobcast=loud", "=info", ""] {
            assert!(
                matches!(check_log_level(bad), Err(LogError::BadLevel { .. })),
                "{bad}"
            );
        }
        let said = check_log_level("verbose").unwrap_err().to_string();
        assert!(said.contains("\"verbose\" is not a level"), "{said}");
    }

    #[test]
    fn a_bad_level_is_an_error_not_a_panic() {
        assert!(matches!(
            init_logging("info,=[", LogFormat::Text),
            Err(LogError::BadLevel { .. })
        ));
    }
}
