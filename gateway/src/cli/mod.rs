//! Command line: `run`, `check-config`, `wal` (offline), `import-connect` (a Kafka
//! Connect setup to a configuration file), and `status`, `backlog`, `records`,
//! `dead-letters` for a running gateway (`console`). Exit codes: 0 ok, 1 runtime
//! error, 2 bad configuration, 3 the WAL cannot be opened, 4 the gateway's admin API
//! does not answer, 5 it refused the token.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod remote;
use remote::{confirm, console, console_call, DeadLetterCommand, PageArgs, TargetArgs};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Loaded};
use crate::run::{forward_options, RunError};

/// Exit code for a bad configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the WAL cannot be opened.
pub const EXIT_WAL: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "mqtt-kafka-gateway",
    version,
    about = "MQTT -> durable WAL -> Kafka gateway for edge sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Configuration file (TOML). Without it, built-in defaults are used.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration file and exit (0 = valid, 2 = invalid).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Write a gateway configuration from a Kafka Connect setup: evokly's MQTT source
    /// connector and, optionally, the Connect worker.
    #[command(
        long_about = crate::import_connect::LONG_ABOUT,
        after_help = crate::import_connect::EXAMPLE
    )]
    ImportConnect(crate::import_connect::Args),
    /// Inspect or repair the WAL (the gateway must not be running).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// The running gateway's state: MQTT, WAL, Kafka, backlog.
    Status {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// The running gateway's backlog: records, bytes, age, dead letters, policy drops.
    Backlog {
        #[command(flatten)]
        target: TargetArgs,
        /// The backlog per topic instead: records, bytes and oldest age of the largest
        /// topics (`admin.topics_limit` of them unless --limit), the rest summed.
        #[arg(long)]
        topics: bool,
        /// With --topics: per Kafka topic (as routed now) or per MQTT topic.
        #[arg(long, value_enum, default_value = "kafka", requires = "topics")]
        by: TopicsBy,
        /// With --topics: rows at most (1-1000).
        #[arg(long, requires = "topics")]
        limit: Option<usize>,
    },
    /// A page of the running gateway's backlog, oldest first.
    Records {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// The running gateway's dead-letter table.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
}

/// What `backlog --topics` groups by.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TopicsBy {
    /// The Kafka topic each record is routed to now.
    Kafka,
    /// The MQTT topic it was published on.
    Mqtt,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// Print WAL statistics as JSON.
    Stats {
        /// Configuration file (TOML); its `wal.dir` is used.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Rename a WAL file that cannot be opened to `wal.redb.damaged-<unix time>` (it
    /// is never deleted), so the gateway starts with an empty WAL.
    MoveAside {
        /// Configuration file (TOML); its `wal.dir` is used.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Move it even if it opens fine.
        #[arg(long)]
        force: bool,
    },
    /// Write every record that can still be read, one JSON object per line, to stdout.
    /// Works on a copy, so the file itself is never changed.
    Dump {
        /// A WAL file (`wal.redb`, or a moved-aside `wal.redb.damaged-*`).
        file: PathBuf,
        /// Also dump the dead-letter table.
        #[arg(long)]
        dead_letters: bool,
    },
}

fn load(path: &Option<PathBuf>) -> Result<Loaded, String> {
    let loaded = match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::from_toml("", "(built-in defaults)").map_err(|e| e.to_string())?,
    };
    crate::forward::validate_producer_config(&loaded, &forward_options(&loaded)).map_err(|e| {
        format!(
            "{}: {e}",
            path.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(built-in defaults)".into())
        )
    })?;
    Ok(loaded)
}

/// The program's entry point (shared by the shipped binary and the test binary).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(l) => {
                println!(
                    "configuration OK: {} MQTT server(s), {} subscription(s), {} route(s), WAL in {}",
                    l.servers.len(),
                    l.config.mqtt.topics.len(),
                    l.config.kafka.routes.len(),
                    l.config.wal.dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("configuration error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Wal { command } => crate::waltool::main(command_args(command)),
        Command::ImportConnect(args) => crate::import_connect::main(&args),
        Command::Status { target } => console(target, "/status", crate::console::status),
        Command::Backlog {
            target,
            topics: true,
            by,
            limit,
        } => {
            let by = match by {
                TopicsBy::Kafka => "kafka",
                TopicsBy::Mqtt => "mqtt",
            };
            let limit = limit.map(|n| format!("&limit={n}")).unwrap_or_default();
            console(
                target,
                &format!("/backlog/topics?by={by}{limit}"),
                crate::console::topics,
            )
        }
        Command::Backlog { target, .. } => console(target, "/backlog", |v| {
            // /backlog is the backlog itself, with the dead letters and rates inside.
            crate::console::backlog(&serde_json::json!({
                "backlog": v,
                "dead_letters": v["dead_letters"],
                "rates": v["rates"],
            }))
        }),
        Command::Records { target, page } => console(
            target,
            &format!("/records{}", page.query()),
            crate::console::records,
        ),
        Command::DeadLetters {
            command: DeadLetterCommand::List { target, page },
        } => console(
            target,
            &format!("/dead-letters{}", page.query()),
            crate::console::dead_letters,
        ),
        Command::DeadLetters {
            command: DeadLetterCommand::Replay { target, select },
        } => console_call(
            target,
            "POST",
            &format!("/dead-letters/replay{}", select.query()),
            crate::console::action,
        ),
        Command::DeadLetters {
            command:
                DeadLetterCommand::Purge {
                    target,
                    select,
                    yes,
                },
        } => {
            if !yes
                && !confirm(&format!(
                    "Delete the dead letters selected by {:?} for good?",
                    select.query()
                ))
            {
                eprintln!("nothing purged");
                return ExitCode::FAILURE;
            }
            console_call(
                target,
                "POST",
                &format!("/dead-letters/purge{}", select.query()),
                crate::console::action,
            )
        }
        Command::Run { config } => {
            let loaded = match load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("configuration error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let log = init_logging(&loaded.config.log);
            crate::memory::tune_malloc();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(async move {
                let shutdown = CancellationToken::new();
                let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
                // Installed before anything else runs: SIGHUP's default action would
                // stop the process.
                let signals = install_signals();
                tokio::spawn(wait_for_signal(signals, shutdown.clone(), reload_tx));
                let control = crate::run::Control {
                    config_path: config,
                    reload: Some(reload_rx),
                    log,
                };
                crate::run::run_with(loaded, control, shutdown, |_| {}).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e @ RunError::WalOpen(_)) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    eprintln!(
                        "the WAL file was left untouched; move it aside to start with an empty WAL"
                    );
                    ExitCode::from(EXIT_WAL)
                }
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn command_args(c: WalCommand) -> crate::waltool::Command {
    use crate::waltool::Command as W;
    let dir =
        |config: Option<PathBuf>| -> Result<PathBuf, String> { Ok(load(&config)?.config.wal.dir) };
    match c {
        WalCommand::Stats { config } => W::Stats(dir(config)),
        WalCommand::MoveAside { config, force } => W::MoveAside(dir(config), force),
        WalCommand::Dump { file, dead_letters } => W::Dump(file, dead_letters),
    }
}

/// Set up logging; returns what changes the filter on a reload (none while
/// `RUST_LOG` sets it: the environment wins over the file).
fn init_logging(filter: &str) -> Option<crate::reload::LogFilter> {
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only on a terminal: under systemd stderr goes to the journal, and escape
    // codes would end up in every line it stores and forwards.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.try_init().ok()?;
    if from_env {
        return None;
    }
    Some(Box::new(move |f: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// SIGTERM and SIGHUP handlers (SIGINT is `ctrl_c`).
fn install_signals() -> Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)> {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(h)) => Some((t, h)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install the signal handlers");
            None
        }
    }
}

/// SIGTERM and SIGINT stop the gateway; SIGHUP asks for a configuration reload (and
/// never stops it).
async fn wait_for_signal(
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let Some((mut term, mut hup)) = signals else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload.send(());
                continue;
            }
            _ = shutdown.cancelled() => return,
        }
        break;
    }
    shutdown.cancel();
}
