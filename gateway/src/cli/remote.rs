//! The commands for a running gateway (`status`, `backlog`, `records`,
//! `dead-letters`): their arguments, and the call to its admin API
//! (`crate::console`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(super) enum DeadLetterCommand {
    /// A page of the parked records with their reasons.
    List {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Put the selected dead letters back in front of the forwarder, in their order
    /// (once the cause is fixed). Needs the admin token.
    Replay {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Delete the selected dead letters for good (counted and logged). Needs the admin
    /// token; asks for confirmation unless --yes.
    Purge {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters.
#[derive(Debug, Args)]
pub(super) struct SelectArgs {
    /// Sequences from this one on.
    #[arg(long)]
    from: Option<u64>,
    /// Sequences up to this one.
    #[arg(long)]
    to: Option<u64>,
    /// MQTT topic filter (`+`, `#`).
    #[arg(long)]
    topic: Option<String>,
    /// Only those whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Every dead letter (needed when nothing else is chosen).
    #[arg(long)]
    all: bool,
}

impl SelectArgs {
    pub(super) fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(f) = self.from {
            q.push(format!("from={f}"));
        }
        if let Some(t) = self.to {
            q.push(format!("to={t}"));
        }
        if let Some(t) = &self.topic {
            q.push(format!("topic={}", encode(t)));
        }
        if let Some(r) = &self.reason {
            q.push(format!("reason={}", encode(r)));
        }
        if self.all {
            q.push("all=true".into());
        }
        format!("?{}", q.join("&"))
    }
}

/// Percent-encode a query value.
fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where the running gateway's admin API is.
#[derive(Debug, Args)]
pub(super) struct TargetArgs {
    /// The gateway's configuration file: `admin.listen` and `admin.token_file`.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// The admin API's address instead: http://HOST:PORT or https://HOST:PORT
    /// (default http://127.0.0.1:9080).
    #[arg(long)]
    url: Option<String>,
    /// A file holding the admin token instead of the config's `admin.token_file`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For an https:// URL: the CA certificate(s) that signed the gateway's certificate
    /// (PEM). Without it, the certificate of the config's `admin.tls.cert_file` is the
    /// only one accepted.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Which records.
#[derive(Debug, Args)]
pub(super) struct PageArgs {
    /// First sequence number (default: the oldest).
    #[arg(long)]
    from: Option<u64>,
    /// Records at most (1-1000).
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Only records whose MQTT topic matches this filter (`+`, `#`).
    #[arg(long)]
    topic: Option<String>,
}

impl PageArgs {
    pub(super) fn query(&self) -> String {
        let mut q = format!("?limit={}", self.limit);
        if let Some(f) = self.from {
            q.push_str(&format!("&from={f}"));
        }
        if let Some(t) = &self.topic {
            q.push_str("&topic=");
            q.push_str(&encode(t));
        }
        q
    }
}

/// GET `path` from the running gateway and print it with `table` (or as JSON).
pub(super) fn console(
    target: TargetArgs,
    path: &str,
    table: fn(&serde_json::Value) -> String,
) -> ExitCode {
    console_call(target, "GET", path, table)
}

/// `method` `path` on the running gateway, printed with `table` (or as JSON).
pub(super) fn console_call(
    target: TargetArgs,
    method: &str,
    path: &str,
    table: fn(&serde_json::Value) -> String,
) -> ExitCode {
    use crate::console::{Client, Target};
    let t = Target {
        config: target.config,
        url: target.url,
        token_file: target.token_file,
        ca_file: target.ca_file,
    };
    let answer = Client::new(&t).and_then(|c| c.call(method, path));
    match answer {
        Ok(v) if target.json => {
            println!("{v:#}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            print!("{}", table(&v));
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Ask on the terminal; false unless the answer is "y" or "yes" (and on no terminal).
pub(super) fn confirm(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        eprintln!("{question} Not asked: no terminal; pass --yes");
        return false;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
