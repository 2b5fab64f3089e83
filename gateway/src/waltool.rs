//! `mqtt-kafka-gateway wal ...`: operator tools for the WAL file. None of them deletes
//! anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wal::{journal, OpenError, Wal, WalOptions, FILE_NAME};

/// A WAL subcommand with its resolved arguments.
#[derive(Debug)]
pub enum Command {
    /// Print stats of the WAL in this directory (or the config error).
    Stats(Result<PathBuf, String>),
    /// Move the WAL file in this directory aside.
    MoveAside(Result<PathBuf, String>, bool),
    /// Dump a WAL file.
    Dump(PathBuf, bool),
}

/// Run a WAL subcommand.
pub fn main(c: Command) -> ExitCode {
    let r = match c {
        Command::Stats(dir) => dir.and_then(|d| stats(&d)),
        Command::MoveAside(dir, force) => dir.and_then(|d| move_aside(&d, force)),
        Command::Dump(file, dead) => dump(&file, dead),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn stats(dir: &Path) -> Result<(), String> {
    let wal = Wal::open(dir, WalOptions::default()).map_err(|e| e.to_string())?;
    let s = wal.stats();
    println!(
        "{}",
        serde_json::json!({
            "path": wal.path().display().to_string(),
            "records": s.records,
            "bytes": s.bytes,
            "oldest_seq": s.oldest_seq,
            "newest_seq": s.newest_seq,
            "next_seq": s.next_seq,
            "dead_letters": s.dead_letters,
            "dead_letter_bytes": s.dead_letter_bytes,
        })
    );
    Ok(())
}

fn move_aside(dir: &Path, force: bool) -> Result<(), String> {
    let file = dir.join(FILE_NAME);
    if !file.exists() {
        return Err(format!("{} does not exist", file.display()));
    }
    match Wal::open(dir, WalOptions::default()) {
        Err(OpenError::Locked { path }) => {
            return Err(format!(
                "{} is in use by a running gateway; stop it first",
                path.display()
            ))
        }
        Ok(wal) if !force => {
            let n = wal.stats().records;
            return Err(format!(
                "{} opens fine ({n} records waiting); not moving it (use --force to move it anyway)",
                file.display()
            ));
        }
        Ok(_) => {}
        Err(e) => eprintln!("WAL cannot be opened: {e}"),
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let target = dir.join(format!("{FILE_NAME}.damaged-{now}"));
    // The journal holds commits the database may not have yet: it moves along, under
    // the same suffix, so that `wal dump` reads both.
    let journal_file = dir.join(journal::FILE_NAME);
    if journal_file.exists() {
        let journal_target = dir.join(format!("{}.damaged-{now}", journal::FILE_NAME));
        std::fs::rename(&journal_file, &journal_target).map_err(|e| {
            format!(
                "cannot rename {} to {}: {e}",
                journal_file.display(),
                journal_target.display()
            )
        })?;
        println!(
            "moved {} to {}",
            journal_file.display(),
            journal_target.display()
        );
    }
    std::fs::rename(&file, &target).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            file.display(),
            target.display()
        )
    })?;
    println!(
        "moved {} to {}; the gateway will start with an empty WAL. \
         Inspect the old file with: mqtt-kafka-gateway wal dump {}",
        file.display(),
        target.display(),
        target.display()
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn dump(file: &Path, dead_letters: bool) -> Result<(), String> {
    // redb may repair the file on open: work on a copy so the original stays as found.
    let tmp = tempdir_for(file)?;
    std::fs::copy(file, tmp.join(FILE_NAME))
        .map_err(|e| format!("cannot copy {}: {e}", file.display()))?;
    // Its journal (commits not yet in the database) is next to it, with the same suffix.
    if let Some(journal_file) = journal_beside(file) {
        std::fs::copy(&journal_file, tmp.join(journal::FILE_NAME))
            .map_err(|e| format!("cannot copy {}: {e}", journal_file.display()))?;
        eprintln!("reading the journal {} too", journal_file.display());
    }
    let result = (|| {
        let wal = Wal::open(&tmp, WalOptions::default())
            .map_err(|e| format!("{} cannot be read: {e}", file.display()))?;
        let mut from = 0u64;
        let mut n = 0u64;
        loop {
            let batch = wal
                .read_from(from, 1000, 16 << 20)
                .map_err(|e| format!("read stopped after {n} records at seq {from}: {e}"))?;
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            for r in batch {
                println!(
                    "{}",
                    serde_json::json!({
                        "table": "records", "seq": r.seq, "topic": r.topic, "qos": r.qos,
                        "retain": r.retain, "dup": r.dup, "receive_time_ms": r.receive_time_ms,
                        "payload_hex": hex(&r.payload),
                    })
                );
                n += 1;
            }
            from = last + 1;
        }
        if dead_letters {
            for d in wal.dead_letters(0, usize::MAX).map_err(|e| e.to_string())? {
                println!(
                    "{}",
                    serde_json::json!({
                        "table": "dead_letter", "seq": d.record.seq, "topic": d.record.topic,
                        "reason": d.reason, "parked_at_ms": d.parked_at_ms,
                        "payload_hex": hex(&d.record.payload),
                    })
                );
            }
        }
        eprintln!("dumped {n} records from {}", file.display());
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// `journal.log[suffix]` next to `wal.redb[suffix]`, if it exists.
fn journal_beside(file: &Path) -> Option<PathBuf> {
    let name = file.file_name()?.to_str()?;
    let suffix = name.strip_prefix(FILE_NAME)?;
    let journal_file = file.with_file_name(format!("{}{suffix}", journal::FILE_NAME));
    journal_file.exists().then_some(journal_file)
}

fn tempdir_for(file: &Path) -> Result<PathBuf, String> {
    let base = std::env::temp_dir().join(format!(
        "mkg-wal-dump-{}-{}",
        std::process::id(),
        file.file_name().and_then(|s| s.to_str()).unwrap_or("wal")
    ));
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    Ok(base)
}
