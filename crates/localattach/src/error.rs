//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::LocalAttachment;

/// Everything that can go wrong attaching, detaching or cleaning up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The attachment name is not usable as a directory name and mount
    /// source (it must be 1 to 64 of `[A-Za-z0-9._-]`, not `.` or `..`).
    #[error("invalid attachment name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, not . or ..")]
    InvalidName(String),
    /// The [`BlockDevice`](crate::BlockDevice) reports a geometry this crate
    /// cannot serve.
    #[error("unusable block device geometry: {0}")]
    InvalidDevice(String),
    /// Something is already attached, mounted or left over at the
    /// attachment's directory (run [`cleanup_stale`](crate::cleanup_stale)
    /// at start-up to clear what a crashed process left).
    #[error("{path} is already in use: {reason}")]
    AlreadyExists {
        /// The attachment directory.
        path: PathBuf,
        /// What is there.
        reason: String,
    },
    /// Mounting or serving the FUSE file system failed.
    #[error("FUSE mount at {path}: {source}")]
    Fuse {
        /// The mount point.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A loop device operation failed.
    #[error("loop device {device}: {op}: {source}")]
    Loop {
        /// The loop device (or `/dev/loop-control`).
        device: PathBuf,
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The loop device is still in use (a mounted file system, another
    /// opener); nothing was detached. The attachment is handed back in
    /// [`Busy::into_attachment`] and works as before.
    #[error(transparent)]
    Busy(Busy),
    /// Any other I/O error (directories, `/proc`, `/sys`, the block
    /// device's flush at detach).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn looperr(device: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Self::Loop {
            device: device.into(),
            op,
            source,
        }
    }

    /// Whether this is [`Error::Busy`].
    #[must_use]
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy(_))
    }
}

/// A detach refused because the loop device is in use. Holds the attachment,
/// still attached and serving, so the caller can retry later or keep it.
/// Dropping this drops the attachment (see [`LocalAttachment`]'s `Drop`).
pub struct Busy {
    pub(crate) reason: String,
    pub(crate) attachment: Box<LocalAttachment>,
}

impl Busy {
    /// Why the device is busy.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The attachment, still attached.
    #[must_use]
    pub fn into_attachment(self) -> LocalAttachment {
        *self.attachment
    }
}

impl fmt::Debug for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Busy")
            .field("reason", &self.reason)
            .field("attachment", &self.attachment)
            .finish()
    }
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is busy ({}); unmount it or close it, then detach again",
            self.attachment.loop_device().display(),
            self.reason
        )
    }
}

impl std::error::Error for Busy {}
