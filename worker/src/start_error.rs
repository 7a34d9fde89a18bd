//! Why a run could not be started. Its text becomes the run's `failed_to_start` reason,
//! which operators read in `jobcastctl runs` and the dashboard: it says what to fix.

use std::io;
use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(
        "the job needs {name} from the worker, and worker {worker} does not provide it \
         (list it under [worker_env] in the worker config, or pass --worker-env {name})"
    )]
    NotProvided { name: String, worker: String },
    #[error("worker {worker} provides {name} from ${var}, which is not set")]
    VariableUnset {
        name: String,
        worker: String,
        var: String,
    },
    #[error("worker {worker} provides {name} from {}, which cannot be read: {source}", path.display())]
    Unreadable {
        name: String,
        worker: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the value of {name} contains a NUL byte")]
    NulInValue { name: String },
    #[error("the job's command is empty")]
    EmptyCommand,
    #[error("the script has no #! line naming its interpreter")]
    NoInterpreter,
    #[error("cannot write the script in {}: {source}", dir.display())]
    WriteScript { dir: PathBuf, source: io::Error },
    #[error("working directory {dir} does not exist")]
    NoWorkdir { dir: String },
    #[error("cannot start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("cannot open the run's cgroup: {source}")]
    Cgroup { source: io::Error },
    #[error("cannot set up the run's output: {0}")]
    Output(#[source] io::Error),
}
