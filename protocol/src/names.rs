//! Validation of the names that appear in PUB topics and store keys.
//!
//! Topics match by prefix, so a name must never contain the topic separator `/`; keeping
//! names to a small alphabet also keeps them safe in file names, logs and tables.

use thiserror::Error;

pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {what} {name:?}: use 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 _ . -")]
pub struct InvalidName {
    pub what: &'static str,
    pub name: String,
}

/// Checks a worker id, pool or job name. `what` names the field in the error.
pub fn validate(what: &'static str, name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["w1", "backup-db", "pool_2", "a.b", &"x".repeat(64)] {
            assert_eq!(validate("worker", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_separators_spaces_and_empty() {
        for name in ["", "w/1", "a b", "é", "x\n", &"x".repeat(65)] {
            let err = validate("worker", name).unwrap_err();
            assert!(err.to_string().contains("invalid worker"), "{err}");
        }
    }
}
