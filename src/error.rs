//! Library error type. Every variant names what the user must fix: a file,
//! a line, a tensor or a field. The CLI wraps these with anyhow at the edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("unsupported architecture `{arch}` in {path}; supported: {supported}")]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("policy and reference are incompatible: {0}")]
    Incompatible(String),
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{location}: {msg}")]
    Input { location: String, msg: String },
    #[error("{0}")]
    Backend(String),
    /// One input record's problem, with the record's `id` as far as it could
    /// be read (so an error record keeps it); the message is the inner one.
    #[error("{error}")]
    Record { id: String, error: Box<Error> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(path: impl Into<PathBuf>, tensor: &str, msg: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.into(),
            tensor: tensor.to_string(),
            msg: msg.into(),
        }
    }
    pub fn input(location: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Input {
            location: location.into(),
            msg: msg.into(),
        }
    }
    /// This error, tagged with the `id` of the record it belongs to.
    pub fn in_record(self, id: Option<String>) -> Self {
        match (id, self) {
            (Some(id), Error::Record { error, .. }) => Error::Record { id, error },
            (Some(id), error) => Error::Record {
                id,
                error: Box::new(error),
            },
            (None, error) => error,
        }
    }
    /// The `id` of the record this error belongs to, when it could be read.
    pub fn record_id(&self) -> Option<&str> {
        match self {
            Error::Record { id, .. } => Some(id),
            _ => None,
        }
    }
}
