//! Typed errors: one enum per operation, all converting into [`Error`].

use std::path::PathBuf;

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
        /// What redb said.
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
        source: Box<redb::Error>,
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
                source: Box::new(other.into()),
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
    /// before retrying: redb refuses writes after a failed commit.
    #[error("WAL storage error: {0}")]
    Storage(#[from] redb::Error),
    /// The batch acknowledged a sequence that was never assigned (a caller bug).
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
}

impl CommitError {
    /// True when the disk is full (ENOSPC).
    pub fn is_disk_full(&self) -> bool {
        self.io_error()
            .is_some_and(|e| e.raw_os_error() == Some(libc_enospc()))
    }

    /// The underlying I/O error, if there is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            CommitError::Storage(redb::Error::Io(e)) => Some(e),
            _ => None,
        }
    }
}

const fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux, all architectures
}

macro_rules! storage_from {
    ($target:ident: $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                $target::Storage(e.into())
            }
        }
    )*};
}
storage_from!(CommitError: redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Storage failed.
    #[error("WAL read error: {0}")]
    Storage(#[from] redb::Error),
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
storage_from!(ReadError: redb::TransactionError, redb::TableError, redb::StorageError);

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
