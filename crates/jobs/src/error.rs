//! The job layer's error type. Messages are for the studio's logs; the server decides what a
//! client sees.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),

    #[error("database migration {version} ({name}): {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },

    #[error("the database has schema version {found}, newer than this studio understands ({supported})")]
    TooNew { found: i64, supported: i64 },

    #[error("job `{0}` not found")]
    JobNotFound(String),

    #[error("checkpoint at step {step} of job `{job}` not found")]
    CheckpointNotFound { job: String, step: u64 },

    #[error("job `{id}` is {status}: {message}")]
    InvalidState { id: String, status: String, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start worker {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    Unsupported(String),

    #[error("the studio's writer has stopped")]
    WriterGone,
}

impl JobsError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

pub type Result<T, E = JobsError> = std::result::Result<T, E>;
