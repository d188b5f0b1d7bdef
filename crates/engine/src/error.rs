//! The engine's error type: every failure a user can cause names the file, tensor, field or line
//! it came from, so the CLI and the studio can show it as it is.

use std::path::PathBuf;

/// Errors raised by the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor { path: PathBuf, tensor: String, message: String },

    #[error("config `{key}`: {message}")]
    Config { key: String, message: String },

    #[error("{path}:{line}: {message}")]
    Record { path: PathBuf, line: usize, message: String },

    #[error("unsupported architecture `{name}`; supported families: {supported}")]
    UnsupportedArchitecture { name: String, supported: String },

    #[error("training interrupted")]
    Interrupted,

    /// The device (or the host) ran out of memory; the studio retries with a smaller micro-batch.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    #[error("{0}")]
    Candle(candle_core::Error),

    #[error("{0}")]
    Other(String),
}

impl EngineError {
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::File { path: path.into(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), error: source }
    }

    pub fn tensor(path: impl Into<PathBuf>, tensor: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Tensor { path: path.into(), tensor: tensor.into(), message: message.into() }
    }

    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config { key: key.into(), message: message.into() }
    }

    pub fn record(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Self::Record { path: path.into(), line, message: message.into() }
    }
}

impl From<candle_core::Error> for EngineError {
    /// Drops candle's captured backtrace: users see the message, not our call stack.
    fn from(e: candle_core::Error) -> Self {
        let mut e = e;
        while let candle_core::Error::WithBacktrace { inner, .. } = e {
            e = *inner;
        }
        Self::Candle(e)
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
