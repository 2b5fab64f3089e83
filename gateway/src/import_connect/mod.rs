//! `import-connect`: turn a Kafka Connect setup (evokly's MQTT source connector,
//! github.com/evokly/kafka-connect-mqtt, and the Connect worker) into a gateway
//! configuration file.
//!
//! The files are read as Connect reads them ([`properties`]); every key is either
//! mapped (with a comment naming it), explained as not needed, or reported as unknown
//! (exit 2, nothing written). Secrets go to files of their own next to the output
//! (mode 0600), never into the TOML text nor onto the terminal. The text is checked as
//! `check-config` checks it before it is written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod connector;
mod jaas;
mod plan;
mod producer;
pub mod properties;
mod records;
mod render;
mod security;
#[cfg(test)]
mod tests;
mod worker;

use plan::{Mapper, Note, OutPaths, Plan};
use properties::Properties;

/// Exit code for unknown keys or an input that cannot be mapped.
pub const EXIT_UNMAPPABLE: u8 = 2;
/// Exit code when a file cannot be read or written.
pub const EXIT_IO: u8 = 1;

/// `import-connect --help`.
pub const LONG_ABOUT: &str = "\
Write a gateway configuration from a Kafka Connect setup: evokly's MQTT source connector \
(com.evokly.kafka.connect.mqtt.MqttSourceConnector) and, optionally, the Connect worker.

The .properties files are read as Kafka Connect reads them. Every key is mapped to a \
gateway setting under a comment naming the Connect key and its value, or listed as \
not needed by the gateway (tasks.max, the worker's group.id, storage topics, REST, \
plugin.path...). Where the gateway behaves differently (a persistent MQTT session with \
a fixed client id, the record format, acks=all, Java key stores...) a \"note:\" line is \
printed and the same note is written at the top of the output.

Secrets are never written into the output nor printed: mqtt.password goes to \
<output stem>.mqtt.password, the password of sasl.jaas.config to \
<output stem>.kafka.password, next to the output with mode 0600, and the output refers \
to them by absolute path (mqtt.password_file, kafka.sasl_password_file). JKS and \
PKCS12 stores are not read: the output holds the keytool / openssl commands that make \
the PEM files librdkafka needs.

The text is checked as check-config checks it before it is written.

Exit codes: 0 written; 1 a file cannot be read or written, or the output exists \
(--force replaces it); 2 unknown keys (each is named) or an input the gateway cannot \
reproduce (a message_processor_class of your own, transforms, Kerberos...): nothing \
is written.";

/// `import-connect --help`: an example.
pub const EXAMPLE: &str = "\
Example:
  mqtt-kafka-gateway import-connect --connector mqtt.properties \\
      --worker connect-standalone.properties --output /etc/mqtt-kafka-gateway/gateway.toml";

/// The command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The connector's .properties file (connector.class =
    /// com.evokly.kafka.connect.mqtt.MqttSourceConnector).
    #[arg(long, value_name = "FILE")]
    pub connector: PathBuf,
    /// The Connect worker's .properties file (e.g. connect-standalone.properties): the
    /// Kafka address, security and producer.* settings. Without it the Kafka side is
    /// left at the gateway's defaults.
    #[arg(long, value_name = "FILE")]
    pub worker: Option<PathBuf>,
    /// The gateway configuration to write. Password files are written next to it, named
    /// after it (gateway.mqtt.password, gateway.kafka.password).
    #[arg(short, long, value_name = "FILE", default_value = "gateway.toml")]
    pub output: PathBuf,
    /// Replace the output and the files next to it if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Why the import stopped.
#[derive(Debug)]
enum Stop {
    /// A file cannot be read or written (exit 1).
    Io(String),
    /// Unknown keys or inputs that cannot be mapped (exit 2); every line is printed.
    Input(Vec<String>),
}

/// Run the command; prints what it did and returns the exit code.
pub fn main(args: &Args) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Io(e)) => {
            eprintln!("error: {e}");
            eprintln!("nothing written");
            ExitCode::from(EXIT_IO)
        }
        Err(Stop::Input(lines)) => {
            for l in lines {
                eprintln!("{l}");
            }
            eprintln!("nothing written");
            ExitCode::from(EXIT_UNMAPPABLE)
        }
    }
}

/// An input file, decoded and parsed.
struct Input {
    path: PathBuf,
    props: Properties,
    non_ascii: bool,
}

fn read(path: &Path) -> Result<Input, Stop> {
    let bytes = std::fs::read(path)
        .map_err(|e| Stop::Io(format!("cannot read {}: {e}", path.display())))?;
    // Properties.load(InputStream), which Connect uses, reads ISO-8859-1: each byte is
    // the character with that code.
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let props = properties::parse(&text)
        .map_err(|e| Stop::Input(vec![format!("error: {}: {e}", path.display())]))?;
    Ok(Input {
        path: absolute(path),
        props,
        non_ascii: !bytes.is_ascii(),
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Map the inputs to a plan (pure: reads no file but those the plan refers to, to
/// note the missing ones).
fn map(
    connector: (&Properties, String),
    worker: Option<(&Properties, String)>,
    out: &OutPaths,
) -> Plan {
    let mut m = Mapper::new(connector, worker, out);
    connector::map(&mut m);
    records::map(&mut m);
    worker::map(&mut m);
    producer::map(&mut m);
    m.finish()
}

fn run(args: &Args) -> Result<(), Stop> {
    let connector = read(&args.connector)?;
    let worker = args.worker.as_deref().map(read).transpose()?;
    let output = absolute(&args.output);
    let dir = output
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    if !dir.is_dir() {
        return Err(Stop::Io(format!("{} is not a directory", dir.display())));
    }
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| Stop::Io(format!("{} names no file", output.display())))?;
    let out = OutPaths { dir, stem };

    let inputs: Vec<(&str, &Input)> = std::iter::once(("connector", &connector))
        .chain(worker.as_ref().map(|w| ("worker", w)))
        .collect();
    for (_, input) in &inputs {
        for r in &input.props.repeats {
            eprintln!(
                "warning: {}:{}: {} is set again (first on line {}); the later value wins, as in Java",
                input.path.display(),
                r.line,
                r.key,
                r.first_line
            );
        }
    }
    let mut plan = map(
        (&connector.props, connector.path.display().to_string()),
        worker
            .as_ref()
            .map(|w| (&w.props, w.path.display().to_string())),
        &out,
    );
    for (_, input) in &inputs {
        if input.non_ascii {
            plan.notes.push(Note {
                key: input.path.display().to_string(),
                text: "holds non-ASCII bytes: read as ISO-8859-1, as Connect reads .properties files (write other characters as \\uXXXX escapes)".into(),
            });
        }
    }
    let mut problems = Vec::new();
    if !plan.unknown.is_empty() {
        problems.push(
            "error: unknown keys (neither evokly's MqttSourceConnector's, nor Kafka Connect's, nor the worker's):"
                .to_string(),
        );
        problems.extend(plan.unknown.iter().map(|u| format!("  {u}")));
    }
    problems.extend(
        plan.errors
            .iter()
            .map(|e| format!("error: cannot be mapped: {e}")),
    );
    if !problems.is_empty() {
        return Err(Stop::Input(problems));
    }

    let sources: Vec<(&str, &Path)> = inputs.iter().map(|(w, i)| (*w, i.path.as_path())).collect();
    let text = render::render(&plan, &sources, &output);
    for (_, input) in &inputs {
        if input.path == output || plan.files.iter().any(|f| f.path == input.path) {
            return Err(Stop::Io(format!(
                "the output would replace the input {}",
                input.path.display()
            )));
        }
    }
    if !args.force {
        let taken: Vec<String> = std::iter::once(&output)
            .chain(plan.files.iter().map(|f| &f.path))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !taken.is_empty() {
            return Err(Stop::Io(format!(
                "{} already exist(s); pass --force to replace",
                taken.join(", ")
            )));
        }
    }
    for n in &plan.notes {
        eprintln!("note: {}: {}", n.key, n.text);
    }
    write_all(&plan, &text, &output, args.force)
}

/// Write the files next to the output, check the text as `check-config` does, then
/// write the output. On a failure the files written so far are removed.
fn write_all(plan: &Plan, text: &str, output: &Path, force: bool) -> Result<(), Stop> {
    let mut written: Vec<&Path> = Vec::new();
    let undo = |written: &[&Path]| {
        for p in written {
            let _ = std::fs::remove_file(p);
        }
    };
    for f in &plan.files {
        if let Err(e) = write_file(&f.path, &f.content, f.secret, force) {
            undo(&written);
            return Err(Stop::Io(format!("cannot write {}: {e}", f.path.display())));
        }
        written.push(&f.path);
    }
    let checked = check(text, output);
    if let Err(e) = &checked {
        if plan.missing.is_empty() {
            undo(&written);
            return Err(Stop::Input(vec![format!(
                "error: the generated configuration does not pass check-config: {e}"
            )]));
        }
    }
    if let Err(e) = write_file(output, text, false, force) {
        undo(&written);
        return Err(Stop::Io(format!("cannot write {}: {e}", output.display())));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "wrote {}", output.display());
    for f in &plan.files {
        let mode = if f.secret { ", mode 0600" } else { "" };
        let _ = writeln!(stdout, "wrote {} ({}{mode})", f.path.display(), f.what);
    }
    match checked {
        Ok(summary) => {
            let _ = writeln!(stdout, "check-config: {summary}");
        }
        Err(e) => {
            let missing: Vec<String> = plan
                .missing
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let _ = writeln!(
                stdout,
                "check-config: not yet: {e}\n  (it needs {} on the gateway's machine)",
                missing.join(", ")
            );
        }
    }
    let _ = writeln!(
        stdout,
        "next: read the notes at the top of {0}, set wal.dir, then run: mqtt-kafka-gateway check-config --config {0}",
        output.display()
    );
    Ok(())
}

/// The checks of `check-config`, on the text about to be written.
fn check(text: &str, output: &Path) -> Result<String, String> {
    let name = output.display().to_string();
    let loaded = crate::config::Config::from_toml(text, &name).map_err(|e| e.to_string())?;
    crate::forward::validate_producer_config(&loaded, &crate::run::forward_options(&loaded))
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(format!(
        "OK: {} MQTT server(s), {} subscription(s), Kafka {}",
        loaded.servers.len(),
        loaded.config.mqtt.topics.len(),
        loaded.config.kafka.bootstrap_servers
    ))
}

/// Write `content` to `path`; a secret gets mode 0600 before any byte is written.
fn write_file(path: &Path, content: &str, secret: bool, force: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    if secret {
        // An existing file (--force) keeps its mode on open: narrow it first.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(content.as_bytes())?;
    file.sync_all()
}
