//! Typed errors: one enum per operation, all converting into [`Error`]. The storage
//! engine underneath (redb) stays out of them: a [`StorageError`] says what a caller
//! needs to know (an I/O error and its kind, a full disk, a closed WAL).

use std::path::PathBuf;

/// A failure of the storage under the WAL: the disk, the files, or the database
/// engine. After one, a commit must be retried after [`crate::Wal::reopen`].
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StorageError(Box<Inner>);

#[derive(Debug, thiserror::Error)]
enum Inner {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Engine(redb::Error),
    #[error("the WAL is closed: the last reopen failed")]
    Closed,
}

impl StorageError {
    pub(crate) fn closed() -> Self {
        Self(Box::new(Inner::Closed))
    }

    /// The I/O error underneath, if there is one.
    pub fn io(&self) -> Option<&std::io::Error> {
        match &*self.0 {
            Inner::Io(e) => Some(e),
            Inner::Engine(redb::Error::Io(e)) => Some(e),
            _ => None,
        }
    }

    /// True when the filesystem is full.
    pub fn is_disk_full(&self) -> bool {
        self.io()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::StorageFull)
    }

    /// True while a failed reopen left the WAL closed.
    pub fn is_closed(&self) -> bool {
        matches!(
            &*self.0,
            Inner::Closed | Inner::Engine(redb::Error::DatabaseClosed)
        )
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        Self(Box::new(Inner::Io(e)))
    }
}

macro_rules! engine_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                Self(Box::new(Inner::Engine(e.into())))
            }
        }
    )*};
}
engine_errors!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError
);

/// Opening the WAL failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The directory or file could not be created or read.
    #[error("cannot open WAL at {path}: {source}")]
    Io {
        /// Path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is damaged; it is left untouched.
    #[error("WAL file {path} is corrupted: {detail}")]
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another process has the file open.
    #[error("WAL file {path} is already open in another process (is another gateway running?)")]
    Locked {
        /// The locked file.
        path: PathBuf,
    },
    /// The file was written by a newer (or unknown) version of the gateway.
    #[error("WAL file {path} has format version {found}; this build supports {supported}")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        found: u64,
        /// Version this build writes.
        supported: u64,
    },
    /// Any other storage error while opening.
    #[error("cannot open WAL file {path}: {source}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: StorageError,
    },
}

impl OpenError {
    pub(crate) fn from_database(path: &std::path::Path, e: redb::DatabaseError) -> Self {
        let path = path.to_path_buf();
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::Locked { path },
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
                OpenError::Corrupted { path, detail }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                OpenError::Corrupted {
                    path,
                    detail: source.to_string(),
                }
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
                OpenError::Io { path, source }
            }
            redb::DatabaseError::RepairAborted => OpenError::Corrupted {
                path,
                detail: "repair aborted".into(),
            },
            other => OpenError::Storage {
                path,
                source: other.into(),
            },
        }
    }

    /// True when the file is damaged (as opposed to unreachable or locked).
    pub fn is_corruption(&self) -> bool {
        matches!(self, OpenError::Corrupted { .. })
    }
}

/// A commit failed; nothing in its batch happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Storage failed (disk full, I/O error...). After this, call [`crate::Wal::reopen`]
    /// before retrying: the engine refuses writes after a failed commit.
    #[error("WAL storage error: {0}")]
    Storage(#[from] StorageError),
    /// The batch acknowledged (or dropped) a sequence that was never assigned (a
    /// caller bug).
    #[error("acknowledged sequence {ack} but the next sequence is {next_seq}")]
    AckBeyondEnd {
        /// The acknowledged sequence.
        ack: u64,
        /// The next unassigned sequence.
        next_seq: u64,
    },
    /// An MQTT topic longer than the format can hold.
    #[error("topic of {0} bytes is longer than 65535 bytes")]
    TopicTooLong(usize),
    /// An invariant of the WAL does not hold (a bug): not a storage failure, so a
    /// reopen and a retry would not help.
    #[error("WAL invariant violated: {0}")]
    Invariant(String),
}

impl CommitError {
    /// True when the disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CommitError::Storage(e) if e.is_disk_full())
    }
}

macro_rules! storage_errors {
    ($target:ident: $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $target::Storage(e.into())
            }
        }
    )*};
}
storage_errors!(CommitError: redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, std::io::Error);

/// A read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Storage failed.
    #[error("WAL read error: {0}")]
    Storage(#[from] StorageError),
    /// A stored value does not decode.
    #[error("WAL file {path}: record {seq} is damaged: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// The record's sequence.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
}
storage_errors!(ReadError: redb::TransactionError, redb::TableError, redb::StorageError);

/// Any WAL error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A commit failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_by_its_kind() {
        let full = StorageError::from(std::io::Error::from_raw_os_error(28));
        assert!(full.is_disk_full());
        let engine = StorageError::from(redb::Error::Io(std::io::Error::from_raw_os_error(28)));
        assert!(CommitError::Storage(engine).is_disk_full());
        assert!(!StorageError::from(std::io::Error::other("eio")).is_disk_full());
        assert!(StorageError::closed().is_closed());
    }
}
