//! What the import makes of its input ([`Plan`]) and the bookkeeping that makes sure
//! every key of the input is looked at ([`Mapper`]): each mapping step takes the keys
//! it handles; whatever is left at the end is unknown.

use std::collections::BTreeSet;
use std::fmt::{self, Write};
use std::path::{Path, PathBuf};

use super::properties::Properties;

/// Which input file a key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Which {
    /// The connector's `.properties`.
    Connector,
    /// The Connect worker's `.properties`.
    Worker,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Connector => "connector",
            Which::Worker => "worker",
        })
    }
}

/// True for keys whose values must never be shown (passwords, JAAS entries, keys).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "jaas",
        "secret",
        "user.info",
        "credentials",
        "token",
    ]
    .iter()
    .any(|s| k.contains(s))
        || k.ends_with("keystore.key")
}

/// A key taken from an input file, its value trimmed as Connect's `ConfigDef` trims it.
#[derive(Debug, Clone)]
pub struct Got {
    /// The file.
    pub which: Which,
    /// The key.
    pub key: String,
    /// The value, trimmed (Java `String.trim`: every character up to U+0020).
    pub value: String,
    /// Its line in the file.
    pub line: usize,
}

impl Got {
    /// `connector: key=value` for a comment or a message; secrets are not shown.
    pub fn source(&self) -> String {
        if is_secret(&self.key) {
            format!("{}: {}=(secret, not shown)", self.which, self.key)
        } else {
            format!("{}: {}={}", self.which, self.key, shown(&self.value))
        }
    }
}

/// A value as a comment line shows it: control characters escaped, a long value (an
/// inline PEM) cut short.
fn shown(value: &str) -> String {
    const MAX: usize = 100;
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            let _ = write!(out, "... ({} characters)", value.chars().count());
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of the output file, with the comment lines above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key as written (quoted where needed).
    pub key: String,
    /// The TOML value as written.
    pub value: String,
    /// False: written commented out, for the user to enable after acting on the
    /// comment.
    pub active: bool,
    /// Comment lines (without `# `).
    pub comments: Vec<String>,
}

impl Setting {
    /// An active setting.
    pub fn new(key: &str, value: String, comments: Vec<String>) -> Self {
        Self {
            key: key.to_string(),
            value,
            active: true,
            comments,
        }
    }

    /// A setting written as a comment.
    pub fn commented(key: &str, value: String, comments: Vec<String>) -> Self {
        Self {
            active: false,
            ..Self::new(key, value, comments)
        }
    }
}

/// A file written next to the output (a password, a PEM taken out of a property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFile {
    /// Absolute path.
    pub path: PathBuf,
    /// Content.
    pub content: String,
    /// A secret: mode 0600.
    pub secret: bool,
    /// What it holds, for the summary ("the MQTT password").
    pub what: &'static str,
}

/// A difference in meaning the user must know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The key it is about.
    pub key: String,
    /// The explanation.
    pub text: String,
}

/// The result of the mapping.
#[derive(Debug, Default)]
pub struct Plan {
    /// `[mqtt]` settings.
    pub mqtt: Vec<Setting>,
    /// `[mqtt.tls]` settings.
    pub mqtt_tls: Vec<Setting>,
    /// `[kafka]` settings.
    pub kafka: Vec<Setting>,
    /// `[kafka.properties]` settings (librdkafka).
    pub properties: Vec<Setting>,
    /// Differences in meaning.
    pub notes: Vec<Note>,
    /// Keys the gateway does not need: (source, why).
    pub not_needed: Vec<(String, String)>,
    /// Unknown keys: `file: key (line N)`.
    pub unknown: Vec<String>,
    /// Inputs that cannot be mapped.
    pub errors: Vec<String>,
    /// Files to write next to the output.
    pub files: Vec<OutFile>,
    /// Files the output refers to that cannot be read on this machine.
    pub missing: Vec<PathBuf>,
}

/// Where the output and the files next to it go.
#[derive(Debug, Clone)]
pub struct OutPaths {
    /// The output's directory, absolute.
    pub dir: PathBuf,
    /// The output's file name without its extension (`gateway` for `gateway.toml`).
    pub stem: String,
}

impl OutPaths {
    /// `<dir>/<stem>.<suffix>`.
    pub fn file(&self, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}.{suffix}", self.stem))
    }
}

/// The mapping's working state.
#[derive(Debug)]
pub struct Mapper<'a> {
    connector: &'a Properties,
    worker: Option<&'a Properties>,
    /// The files' names, for messages.
    names: (String, Option<String>),
    taken: BTreeSet<(Which, String)>,
    /// Keys found unknown while mapping: (file, line, message).
    unknown: Vec<(Which, usize, String)>,
    /// What has been made so far.
    pub plan: Plan,
    /// Where files go.
    pub out: &'a OutPaths,
}

/// Java's `String.trim`.
pub fn java_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c <= ' ')
}

impl<'a> Mapper<'a> {
    /// A mapper over the two files.
    pub fn new(
        connector: (&'a Properties, String),
        worker: Option<(&'a Properties, String)>,
        out: &'a OutPaths,
    ) -> Self {
        Self {
            connector: connector.0,
            names: (connector.1, worker.as_ref().map(|w| w.1.clone())),
            worker: worker.map(|w| w.0),
            taken: BTreeSet::new(),
            unknown: Vec::new(),
            plan: Plan::default(),
            out,
        }
    }

    /// True when a worker file was given.
    pub fn has_worker(&self) -> bool {
        self.worker.is_some()
    }

    fn props(&self, which: Which) -> Option<&'a Properties> {
        match which {
            Which::Connector => Some(self.connector),
            Which::Worker => self.worker,
        }
    }

    /// Take `key` from `which`: it counts as handled.
    pub fn take(&mut self, which: Which, key: &str) -> Option<Got> {
        let entry = self.props(which)?.get(key)?;
        self.taken.insert((which, key.to_string()));
        Some(Got {
            which,
            key: key.to_string(),
            value: java_trim(&entry.value).to_string(),
            line: entry.line,
        })
    }

    /// Take every key of `which` that `select` picks, in file order.
    pub fn take_all(&mut self, which: Which, select: impl Fn(&str) -> bool) -> Vec<Got> {
        let keys: Vec<String> = match self.props(which) {
            Some(p) => p
                .iter()
                .filter(|e| select(&e.key))
                .map(|e| e.key.clone())
                .collect(),
            None => Vec::new(),
        };
        keys.iter().filter_map(|k| self.take(which, k)).collect()
    }

    /// A difference in meaning.
    pub fn note(&mut self, key: &str, text: impl Into<String>) {
        self.plan.notes.push(Note {
            key: key.to_string(),
            text: text.into(),
        });
    }

    /// A key the gateway does not need.
    pub fn not_needed(&mut self, got: &Got, why: impl Into<String>) {
        self.plan.not_needed.push((got.source(), why.into()));
    }

    /// A key that was taken but is not known after all.
    pub fn unknown(&mut self, got: &Got) {
        let file = self.file_name(got.which).to_string();
        self.unknown.push((
            got.which,
            got.line,
            format!("{file}: {} (line {})", got.key, got.line),
        ));
    }

    fn file_name(&self, which: Which) -> &str {
        match which {
            Which::Connector => &self.names.0,
            Which::Worker => self.names.1.as_deref().unwrap_or("worker"),
        }
    }

    /// An input that cannot be mapped.
    pub fn error(&mut self, text: impl Into<String>) {
        self.plan.errors.push(text.into());
    }

    /// Remember that the output refers to `path`; note it when it cannot be read here.
    pub fn refers_to(&mut self, key: &str, path: &Path) {
        if std::fs::File::open(path).is_err() && !self.plan.missing.iter().any(|p| p == path) {
            self.plan.missing.push(path.to_path_buf());
            self.note(
                key,
                format!(
                    "{} cannot be read on this machine: copy it there (or fix the path) before the gateway starts",
                    path.display()
                ),
            );
        }
        if path.is_relative() {
            self.note(
                key,
                format!(
                    "{} is a relative path: the gateway resolves it from its working directory (Connect did from the worker's); make it absolute",
                    path.display()
                ),
            );
        }
    }

    /// Record every key nobody took as unknown; returns the plan.
    pub fn finish(mut self) -> Plan {
        for (which, props) in [
            (Which::Connector, Some(self.connector)),
            (Which::Worker, self.worker),
        ] {
            let Some(props) = props else { continue };
            let file = self.file_name(which).to_string();
            for e in props.iter() {
                if !self.taken.contains(&(which, e.key.clone())) {
                    self.unknown.push((
                        which,
                        e.line,
                        format!("{file}: {} (line {})", e.key, e.line),
                    ));
                }
            }
        }
        self.unknown.sort();
        self.plan.unknown = self.unknown.into_iter().map(|(_, _, u)| u).collect();
        self.plan
    }
}

/// A TOML string literal.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}
