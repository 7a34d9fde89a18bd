//! Bearer tokens and roles: who is asking, what they may do, and what viewers may see.

use super::error::ApiError;
use super::AppState;
use crate::config::{ApiToken, Role};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use jobcast_core::Scope;
use serde_json::{json, Value};

/// Who is asking: the name, role and teams of their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Caller {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) teams: Vec<String>,
}

impl Caller {
    /// Whose jobs and runs the caller may see and act on.
    pub(super) fn scope(&self) -> Scope {
        if self.role == Role::Admin || self.teams.is_empty() {
            Scope::all()
        } else {
            Scope::teams(self.teams.iter().cloned())
        }
    }

    /// What this caller may see of `value`: viewers get env variable names without
    /// their values (they may hold passwords).
    pub(super) fn view(&self, mut value: Value) -> Value {
        if self.role < Role::Operator {
            hide_env_values(&mut value);
        }
        value
    }
}

/// Replaces the value of every variable under any `env` object with a placeholder.
pub fn hide_env_values(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    Value::Object(env) if key == "env" => {
                        for variable in env.values_mut() {
                            *variable = Value::String(HIDDEN.to_string());
                        }
                    }
                    _ => hide_env_values(inner),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_env_values),
        _ => {}
    }
}

/// Who holds the token `presented`, if it is one of `tokens`. Every token is compared,
/// so the time taken does not tell which one matched.
pub(super) fn identify(tokens: &[ApiToken], presented: &str) -> Option<Caller> {
    tokens.iter().fold(None, |found, t| {
        if same_secret(t.token.as_bytes(), presented.as_bytes()) {
            Some(Caller {
                name: t.name.clone(),
                role: t.role,
                teams: t.teams.clone(),
            })
        } else {
            found
        }
    })
}

/// What viewers see instead of an env value.
pub const HIDDEN: &str = "(hidden)";

/// Compares without an early exit, so the time taken does not tell how much matched.
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AppState {
    /// The caller behind the request's bearer token, if its role is at least `needed`.
    pub(super) fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Caller, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send a token: Authorization: Bearer <token>",
                )
            })?;
        let caller = identify(&self.tokens.borrow(), presented).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
        })?;
        let role = caller.role;
        if role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token has {}",
                    needed.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(caller)
    }
}

pub(super) async fn whoami(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    Ok(Json(
        json!({ "role": caller.role.as_str(), "name": caller.name, "teams": caller.teams }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
