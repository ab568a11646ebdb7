//! The crate's one error type: what went wrong, by kind, with a message that says what to do.

use std::fmt;

/// What went wrong in `levee storm`, by kind.
#[derive(Debug)]
pub enum Error {
    /// A scenario, flag, objective or plan was refused: the message names the field.
    Invalid(String),
    /// The server answered something else than expected, or not in time.
    Server(String),
    /// A local operation failed (a socket, a file, a process): what was tried, and why.
    Io {
        /// What was being done.
        what: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// A generator process (listener agent or attacker) failed.
    Agent(String),
}

impl Error {
    /// A refused input.
    pub fn invalid(why: impl Into<String>) -> Self {
        Error::Invalid(why.into())
    }
    /// An unexpected answer from the server.
    pub fn server(why: impl Into<String>) -> Self {
        Error::Server(why.into())
    }
    /// A failed local operation.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
    /// A failed generator process.
    pub fn agent(why: impl Into<String>) -> Self {
        Error::Agent(why.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid: {why}"),
            Error::Server(why) => write!(f, "server: {why}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Agent(why) => write!(f, "generator process: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
