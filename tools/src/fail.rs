//! The one error type at the command's edge: a message for a human.

use std::fmt;

/// Why a subcommand failed, as one line that says what to do.
#[derive(Debug)]
pub struct Fail(String);

impl Fail {
    /// A failure with this message.
    pub fn msg(m: impl Into<String>) -> Self {
        Fail(m.into())
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<xsock::Error> for Fail {
    fn from(e: xsock::Error) -> Self {
        Fail(e.to_string())
    }
}

impl From<xsock_nic::NicError> for Fail {
    fn from(e: xsock_nic::NicError) -> Self {
        Fail(e.to_string())
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail(format!("I/O error: {e}"))
    }
}
