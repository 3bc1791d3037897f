//! Errors of the xsock runtime.

use std::io;

use xsock_nic::{NicError, TxError};

/// An error from the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or driving a frame device failed (the message names the fix).
    #[error(transparent)]
    Nic(#[from] NicError),
    /// A system call failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
    /// A frame could not be queued.
    #[error(transparent)]
    Tx(#[from] TxError),
    /// A handler is already registered for this EtherType.
    #[error("a handler for EtherType {0:#06x} is already registered")]
    HandlerExists(u16),
    /// The datapath thread has stopped.
    #[error("the datapath thread has stopped (it returned an error or was shut down)")]
    Stopped,
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}
