//! One file per command: each states its request, the reply it expects and how that is
//! printed (a table, or JSON with `--json`).

pub(crate) mod alerts;
pub(crate) mod apply;
pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod drain;
pub(crate) mod enable;
pub(crate) mod enqueue;
pub(crate) mod jobs;
pub(crate) mod kill;
pub(crate) mod local;
pub(crate) mod logs;
pub(crate) mod ping;
pub(crate) mod prune;
pub(crate) mod reload;
pub(crate) mod retry;
pub(crate) mod runs;
pub(crate) mod status;

/// Names joined with commas, or `-` for none.
pub(crate) fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(", ")
    }
}
