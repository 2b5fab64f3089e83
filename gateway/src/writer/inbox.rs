//! The WAL thread's two inboxes.

use tokio::sync::mpsc;

use super::WalCmd;

/// The WAL thread's two inboxes. The forwarder's commands (deletes, dead letters; in
/// the order sent, so a record is parked before an ack covering it deletes it) have
/// their own channel and are always taken first: while commits fail and appends are
/// held, they must not wait behind the ingest's appends, since the deletes are what
/// frees space on a full disk.
#[derive(Debug)]
pub struct Inbox {
    ingest: mpsc::Receiver<WalCmd>,
    forward: mpsc::Receiver<WalCmd>,
    ingest_open: bool,
    forward_open: bool,
}

impl Inbox {
    /// Appends come on `ingest`; acks and dead letters on `forward`.
    pub fn new(ingest: mpsc::Receiver<WalCmd>, forward: mpsc::Receiver<WalCmd>) -> Self {
        Self {
            ingest,
            forward,
            ingest_open: true,
            forward_open: true,
        }
    }

    /// The next command, forwarder's first; `None` once every sender is gone.
    pub(crate) async fn recv(&mut self) -> Option<WalCmd> {
        loop {
            if !self.ingest_open && !self.forward_open {
                return None;
            }
            tokio::select! {
                biased;
                cmd = self.forward.recv(), if self.forward_open => match cmd {
                    Some(cmd) => return Some(cmd),
                    None => self.forward_open = false,
                },
                cmd = self.ingest.recv(), if self.ingest_open => match cmd {
                    Some(cmd) => return Some(cmd),
                    None => self.ingest_open = false,
                },
            }
        }
    }

    /// A queued command, forwarder's first.
    pub(crate) fn try_recv(&mut self) -> Result<WalCmd, mpsc::error::TryRecvError> {
        if let Some(cmd) = self.try_recv_forward() {
            return Ok(cmd);
        }
        if self.ingest_open {
            match self.ingest.try_recv() {
                Err(mpsc::error::TryRecvError::Disconnected) => self.ingest_open = false,
                r => return r,
            }
        }
        if self.forward_open {
            Err(mpsc::error::TryRecvError::Empty)
        } else {
            Err(mpsc::error::TryRecvError::Disconnected)
        }
    }

    /// A queued forwarder command.
    pub(crate) fn try_recv_forward(&mut self) -> Option<WalCmd> {
        if !self.forward_open {
            return None;
        }
        match self.forward.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.forward_open = false;
                None
            }
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }
}
