//! Job parameters: what a job declares (`params.NAME = { type = … }` in the jobs file),
//! and the values a run gets, checked against that declaration. A run's values reach its
//! script as `JOBCAST_PARAM_<NAME>` environment variables, never in the script's text.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// A run's parameter values, by name.
pub type Params = BTreeMap<String, String>;

/// What every listing shows instead of a secret parameter's value.
pub const SECRET_MASK: &str = "(secret)";
/// Most parameters one job declares.
pub const MAX_PARAMS: usize = 64;
/// Longest parameter name.
pub const MAX_NAME: usize = 64;
/// Longest value (names and values travel in every grant of the run).
pub const MAX_VALUE: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Boolean,
    Choice,
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// The values a `choice` may take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Stored (the script needs it) but shown nowhere.
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("no parameter named {name:?} (the job declares: {declared})")]
    Unknown { name: String, declared: String },
    #[error("parameter {name:?} is required")]
    Missing { name: String },
    #[error("parameter {name:?}: {value:?} is not an integer")]
    NotInteger { name: String, value: String },
    #[error("parameter {name:?}: {value:?} is not true or false")]
    NotBoolean { name: String, value: String },
    #[error("parameter {name:?}: {value:?} is not one of {choices}")]
    NotAChoice {
        name: String,
        value: String,
        choices: String,
    },
    #[error("parameter {name:?}: values are at most {MAX_VALUE} bytes, without NUL bytes")]
    BadValue { name: String },
    #[error("parameter name {name:?}: use letters, digits and _, starting with a letter, at most {MAX_NAME} bytes")]
    BadName { name: String },
    #[error("parameters {first:?} and {second:?} would be the same environment variable")]
    SameVariable { first: String, second: String },
    #[error("at most {MAX_PARAMS} parameters")]
    TooMany,
    #[error("parameter {name:?} is a choice: list its `choices`")]
    NoChoices { name: String },
    #[error("parameter {name:?}: `choices` are for `type = \"choice\"` only")]
    ChoicesWithoutChoice { name: String },
    #[error("parameter {name:?}: the default does not fit: {problem}")]
    BadDefault {
        name: String,
        problem: Box<ParamError>,
    },
    #[error("parameter {name:?} is required and has a default: keep one")]
    RequiredWithDefault { name: String },
}

/// The environment variable a parameter reaches the script as.
pub fn env_name(name: &str) -> String {
    format!("JOBCAST_PARAM_{}", name.to_ascii_uppercase())
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a job's declarations, as `apply` does.
pub fn check_declarations(declared: &BTreeMap<String, ParamSpec>) -> Result<(), ParamError> {
    if declared.len() > MAX_PARAMS {
        return Err(ParamError::TooMany);
    }
    let mut variables: BTreeMap<String, &String> = BTreeMap::new();
    for (name, spec) in declared {
        if !valid_name(name) {
            return Err(ParamError::BadName { name: name.clone() });
        }
        if let Some(first) = variables.insert(env_name(name), name) {
            return Err(ParamError::SameVariable {
                first: first.clone(),
                second: name.clone(),
            });
        }
        match (spec.kind, spec.choices.is_empty()) {
            (ParamType::Choice, true) => return Err(ParamError::NoChoices { name: name.clone() }),
            (ParamType::Choice, false) => {}
            (_, false) => return Err(ParamError::ChoicesWithoutChoice { name: name.clone() }),
            (_, true) => {}
        }
        if let Some(default) = &spec.default {
            if spec.required {
                return Err(ParamError::RequiredWithDefault { name: name.clone() });
            }
            check_value(name, spec, default).map_err(|problem| ParamError::BadDefault {
                name: name.clone(),
                problem: Box::new(problem),
            })?;
        }
    }
    Ok(())
}

/// Whether `value` fits the parameter `name` declared as `spec`.
pub fn check_value(name: &str, spec: &ParamSpec, value: &str) -> Result<(), ParamError> {
    if value.len() > MAX_VALUE || value.contains('\0') {
        return Err(ParamError::BadValue { name: name.into() });
    }
    match spec.kind {
        ParamType::String => Ok(()),
        ParamType::Integer => {
            value
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| ParamError::NotInteger {
                    name: name.into(),
                    value: value.into(),
                })
        }
        ParamType::Boolean => match value {
            "true" | "false" => Ok(()),
            _ => Err(ParamError::NotBoolean {
                name: name.into(),
                value: value.into(),
            }),
        },
        ParamType::Choice if spec.choices.iter().any(|c| c == value) => Ok(()),
        ParamType::Choice => Err(ParamError::NotAChoice {
            name: name.into(),
            value: value.into(),
            choices: spec.choices.join(", "),
        }),
    }
}

/// The values a run is given: `given` checked against `declared` (every name declared,
/// every value fitting, every required one there), and the defaults for the rest.
pub fn resolve(
    declared: &BTreeMap<String, ParamSpec>,
    given: &Params,
) -> Result<Params, ParamError> {
    for name in given.keys() {
        if !declared.contains_key(name) {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            return Err(ParamError::Unknown {
                name: name.clone(),
                declared: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            });
        }
    }
    let mut values = Params::new();
    for (name, spec) in declared {
        match given.get(name).or(spec.default.as_ref()) {
            Some(value) => {
                check_value(name, spec, value)?;
                values.insert(name.clone(), value.clone());
            }
            None if spec.required => return Err(ParamError::Missing { name: name.clone() }),
            None => {}
        }
    }
    Ok(values)
}

/// What a run of a job declared as `declared` gets from earlier values (a retry's first
/// attempt, a chain's previous run): the values of the parameters it declares under the
/// same names, where they still fit, and its defaults for the rest. A required one with
/// neither is left unset.
pub fn carried(declared: &BTreeMap<String, ParamSpec>, from: &Params) -> Params {
    declared
        .iter()
        .filter_map(|(name, spec)| {
            let kept = from
                .get(name)
                .filter(|value| check_value(name, spec, value).is_ok());
            kept.or(spec.default.as_ref())
                .map(|value| (name.clone(), value.clone()))
        })
        .collect()
}

/// `values` as anyone may see them: secret ones replaced by [`SECRET_MASK`] (a value
/// whose declaration is gone is shown masked too: it may have been secret).
pub fn masked(declared: &BTreeMap<String, ParamSpec>, values: &Params) -> Params {
    values
        .iter()
        .map(|(name, value)| {
            let shown = match declared.get(name) {
                Some(spec) if !spec.secret => value.clone(),
                _ => SECRET_MASK.to_string(),
            };
            (name.clone(), shown)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(kind: ParamType) -> ParamSpec {
        ParamSpec {
            kind,
            choices: vec![],
            default: None,
            required: false,
            description: None,
            secret: false,
        }
    }

    fn declared() -> BTreeMap<String, ParamSpec> {
        BTreeMap::from([
            (
                "target".to_string(),
                ParamSpec {
                    choices: vec!["db".into(), "files".into()],
                    default: Some("db".into()),
                    ..param(ParamType::Choice)
                },
            ),
            (
                "count".to_string(),
                ParamSpec {
                    default: Some("3".into()),
                    ..param(ParamType::Integer)
                },
            ),
            (
                "dry_run".to_string(),
                ParamSpec {
                    default: Some("false".into()),
                    ..param(ParamType::Boolean)
                },
            ),
            (
                "token".to_string(),
                ParamSpec {
                    required: true,
                    secret: true,
                    ..param(ParamType::String)
                },
            ),
        ])
    }

    fn given(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn values_are_checked_against_the_declaration_and_defaults_fill_the_rest() {
        let d = declared();
        assert_eq!(
            resolve(&d, &given(&[("token", "t0p"), ("count", "-7")])),
            Ok(given(&[
                ("count", "-7"),
                ("dry_run", "false"),
                ("target", "db"),
                ("token", "t0p")
            ]))
        );
        let cases = [
            (
                given(&[("token", "x"), ("colour", "red")]),
                "no parameter named \"colour\" (the job declares: count, dry_run, target, token)",
            ),
            (given(&[]), "parameter \"token\" is required"),
            (
                given(&[("token", "x"), ("count", "three")]),
                "parameter \"count\": \"three\" is not an integer",
            ),
            (
                given(&[("token", "x"), ("dry_run", "yes")]),
                "parameter \"dry_run\": \"yes\" is not true or false",
            ),
            (
                given(&[("token", "x"), ("target", "tape")]),
                "parameter \"target\": \"tape\" is not one of db, files",
            ),
            (
                given(&[("token", "a\0b")]),
                "parameter \"token\": values are at most 16384 bytes, without NUL bytes",
            ),
        ];
        for (values, message) in cases {
            assert_eq!(
                resolve(&d, &values).unwrap_err().to_string(),
                message,
                "{values:?}"
            );
        }
    }

    #[test]
    fn declarations_are_checked_when_applied() {
        assert_eq!(check_declarations(&declared()), Ok(()));
        let one = |name: &str, spec: ParamSpec| BTreeMap::from([(name.to_string(), spec)]);
        let cases = [
            (one("9lives", param(ParamType::String)), "parameter name \"9lives\": use letters, digits and _, starting with a letter, at most 64 bytes"),
            (one("a-b", param(ParamType::String)), "parameter name \"a-b\": use letters, digits and _, starting with a letter, at most 64 bytes"),
            (one("pick", param(ParamType::Choice)), "parameter \"pick\" is a choice: list its `choices`"),
            (
                one("n", ParamSpec { choices: vec!["1".into()], ..param(ParamType::Integer) }),
                "parameter \"n\": `choices` are for `type = \"choice\"` only",
            ),
            (
                one("n", ParamSpec { default: Some("x".into()), ..param(ParamType::Integer) }),
                "parameter \"n\": the default does not fit: parameter \"n\": \"x\" is not an integer",
            ),
            (
                one("n", ParamSpec { default: Some("1".into()), required: true, ..param(ParamType::Integer) }),
                "parameter \"n\" is required and has a default: keep one",
            ),
        ];
        for (decl, message) in cases {
            assert_eq!(check_declarations(&decl).unwrap_err().to_string(), message);
        }
        let clash = BTreeMap::from([
            ("name".to_string(), param(ParamType::String)),
            ("NAME".to_string(), param(ParamType::String)),
        ]);
        assert_eq!(
            check_declarations(&clash).unwrap_err().to_string(),
            "parameters \"NAME\" and \"name\" would be the same environment variable"
        );
    }

    #[test]
    fn carried_values_keep_what_still_fits_and_secrets_are_masked() {
        let d = declared();
        let from = given(&[("target", "tape"), ("count", "9"), ("other", "x")]);
        assert_eq!(
            carried(&d, &from),
            given(&[("count", "9"), ("dry_run", "false"), ("target", "db")])
        );
        let values = given(&[("token", "t0p"), ("count", "9"), ("gone", "?")]);
        assert_eq!(
            masked(&d, &values),
            given(&[
                ("count", "9"),
                ("gone", SECRET_MASK),
                ("token", SECRET_MASK)
            ])
        );
        assert_eq!(env_name("dry_run"), "JOBCAST_PARAM_DRY_RUN");
    }
}
