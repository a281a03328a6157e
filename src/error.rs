//! One error type for the core library. Every variant says what went wrong and where,
//! because these messages end up in GStreamer bus errors and CLI output.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("face detector {path}: {reason}")]
    Detector { path: PathBuf, reason: String },
    #[error("frame: {0}")]
    Frame(String),
    #[error("expression '{name}' is not in this model (it has: {available})")]
    UnknownExpression { name: String, available: String },
    #[error("execution provider: {0}")]
    Device(String),
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("OpenCV: {0}")]
    OpenCv(#[from] opencv::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl ToString) -> Self {
        Error::Model {
            path: path.into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn runtime(e: impl std::fmt::Display) -> Self {
        Error::Runtime(e.to_string())
    }
}
