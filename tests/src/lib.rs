//! Test harness: real Mosquitto and real Kafka on free loopback ports, the gateway
//! binary under test with its configuration ([`config`]), an MQTT publisher that knows
//! what the broker acknowledged, a Kafka reader, and a checker that reports lost /
//! duplicated / out-of-order messages.
//!
//! Brokers are started through `scripts/mosquitto-local.sh` and
//! `scripts/kafka-local.sh` (the same scripts the demo uses), each in its own
//! temporary directory, and stopped on drop. Missing software is installed by
//! `scripts/install-deps.sh`; if that is impossible the test fails saying so.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod browser;
pub mod certs;
pub mod checker;
pub mod config;
pub mod publisher;
pub mod qos2pub;
pub mod secured_kafka;
pub mod soak;

pub use checker::{check, Consumed, Published, Report};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Wait until `cond` holds, polling; panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A TCP port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    // Keep handed-out ports distinct within this process even if the OS reuses them.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A process-unique name, for Kafka topics and client ids.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

fn kafka_libs() -> PathBuf {
    if let Ok(p) = std::env::var("MKG_KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("MKG_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/mqtt-kafka-gateway")
        });
    cache.join("kafka-4.1.1/libs")
}

fn deps_present() -> bool {
    let has = |bin: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    has("mosquitto") && has("java") && kafka_libs().join("kafka_2.13-4.1.1.jar").exists()
}

/// Make sure Mosquitto, Java and the Kafka jars are installed (once per process).
pub fn ensure_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        if deps_present() {
            return Ok(());
        }
        eprintln!("[harness] brokers missing: running scripts/install-deps.sh");
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/install-deps.sh"))
            .status()
            .map_err(|e| format!("cannot run scripts/install-deps.sh: {e}"))?;
        if !status.success() || !deps_present() {
            return Err(format!(
                "Mosquitto / Java / Kafka 4.1.1 jars are missing and scripts/install-deps.sh failed ({status}). \
                 Install them with `sudo bash scripts/install-deps.sh` (needs apt and Maven Central)."
            ));
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

fn run_script(script: &str, args: &[&str]) -> Result<(), String> {
    run_script_env(script, args, &[])
}

fn run_script_env(script: &str, args: &[&str], env: &[(String, String)]) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{script} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Send `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we started; no memory is involved.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A Mosquitto broker on a free loopback port, stopped on drop.
#[derive(Debug)]
pub struct Mosquitto {
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// Extra `mosquitto.conf` lines (MKG_MOSQUITTO_EXTRA_CONF).
    extra_conf: String,
}

impl Mosquitto {
    /// Start one (persistence on, raised inflight/queue limits).
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Start one with extra `mosquitto.conf` lines (they override the defaults of
    /// `scripts/mosquitto-local.sh`, e.g. `max_queued_messages 100`).
    pub fn start_with(extra_conf: &str) -> Self {
        ensure_deps();
        let dir = tempfile::Builder::new()
            .prefix("mkg-mosq")
            .tempdir()
            .unwrap();
        let port = free_port();
        let m = Self {
            dir,
            port,
            extra_conf: extra_conf.to_string(),
        };
        m.start_again();
        m
    }

    /// Start one that asks for a user name and password (`allow_anonymous false`, a
    /// `password_file` made with `mosquitto_passwd` for `users`) and applies the ACL
    /// `acl` (`acl_file`), as a secured site's broker is set up.
    pub fn start_secured(users: &[(&str, &str)], acl: &str) -> Self {
        ensure_deps();
        let dir = tempfile::Builder::new()
            .prefix("mkg-mosq")
            .tempdir()
            .unwrap();
        let passwd = dir.path().join("passwd");
        let acl_file = dir.path().join("acl");
        std::fs::write(&acl_file, acl).unwrap();
        let m = Self {
            port: free_port(),
            extra_conf: format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\nlog_type notice\n",
                passwd.display(),
                acl_file.display()
            ),
            dir,
        };
        std::fs::write(&passwd, "").unwrap();
        for (user, password) in users {
            m.set_password(user, password);
        }
        m.start_again();
        m
    }

    /// Set `user`'s password in a secured broker's password file (see
    /// [`Mosquitto::start_secured`]) and, if it runs, make it read the file again
    /// (SIGHUP): connections made from now on need the new password.
    pub fn set_password(&self, user: &str, password: &str) {
        let passwd = self.dir.path().join("passwd");
        let out = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwd)
            .args([user, password])
            .output()
            .expect("mosquitto_passwd (scripts/install-deps.sh installs mosquitto)");
        assert!(
            out.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(pid) = self.pid() {
            kill(pid, libc::SIGHUP);
        }
    }

    /// Start it again after [`Mosquitto::kill`] (same port, same persistence file).
    pub fn start_again(&self) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        run_script_env(
            "mosquitto-local.sh",
            &["start", &dir, &self.port.to_string()],
            &[("MKG_MOSQUITTO_EXTRA_CONF".into(), self.extra_conf.clone())],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Its process id.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.dir.path().join("mosquitto.pid"))
    }

    /// Its directory (config, log `mosquitto.log`, persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Send a signal and wait for the process to go (for TERM/KILL).
    pub fn kill(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            kill(pid, sig);
            wait_until("mosquitto to exit", Duration::from_secs(30), || {
                !Path::new(&format!("/proc/{pid}")).exists()
                    || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .map(|s| s.contains(") Z "))
                        .unwrap_or(true)
            });
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        let _ = run_script("mosquitto-local.sh", &["stop", &dir]);
    }
}

/// A single-node KRaft Kafka on free loopback ports, stopped on drop.
#[derive(Debug)]
pub struct Kafka {
    dir: tempfile::TempDir,
    /// Client port.
    pub port: u16,
    controller_port: u16,
    env: Vec<(String, String)>,
}

impl Kafka {
    /// Start one and wait until it accepts connections.
    pub fn start() -> Self {
        let k = Self::not_started();
        k.start_again();
        k
    }

    /// Reserve ports and a directory without starting (for "Kafka down" tests).
    pub fn not_started() -> Self {
        ensure_deps();
        Self {
            dir: tempfile::Builder::new()
                .prefix("mkg-kafka")
                .tempdir()
                .unwrap(),
            port: free_port(),
            controller_port: free_port(),
            env: Vec::new(),
        }
    }

    /// Topic auto-creation on or off (`scripts/kafka-local.sh` MKG_KAFKA_AUTO_CREATE)
    /// for the next start.
    pub fn auto_create(mut self, on: bool) -> Self {
        self.env
            .push(("MKG_KAFKA_AUTO_CREATE".into(), on.to_string()));
        self
    }

    /// Extra `server.properties` lines (MKG_KAFKA_EXTRA_PROPS) for the next start.
    pub fn server_props(mut self, lines: &str) -> Self {
        self.env
            .push(("MKG_KAFKA_EXTRA_PROPS".into(), lines.to_string()));
        self
    }

    /// Create `topic` with `partitions` partitions (for brokers without auto-create).
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// Create `topic` with topic-level `configs` (e.g. `message.timestamp.type`).
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let res = runtime()
            .block_on(admin.create_topics([&new], &opts))
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        for r in res {
            if let Err((t, e)) = r {
                panic!("create topic {t}: {e}");
            }
        }
    }

    /// Start (or restart, keeping its data).
    pub fn start_again(&self) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        run_script_env(
            "kafka-local.sh",
            &[
                "start",
                &dir,
                &self.port.to_string(),
                &self.controller_port.to_string(),
            ],
            &self.env,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stop it (SIGTERM, then wait).
    pub fn stop(&self) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        let _ = run_script("kafka-local.sh", &["stop", &dir]);
    }

    /// Its process id while running.
    pub fn pid(&self) -> Option<i32> {
        read_pid(&self.dir.path().join("kafka.pid"))
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker log's last `n` lines that say something went wrong or changed
    /// state (WARN, ERROR, fencing), for a failing test to show.
    pub fn log_excerpt(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("kafka.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("enc"))
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway binary under test, killed on drop.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    bin: PathBuf,
    /// Working directory: config, WAL, logs.
    pub dir: PathBuf,
    /// Admin API address.
    pub admin: SocketAddr,
    config: PathBuf,
    runs: u32,
    env: Vec<(String, String)>,
}

impl Gateway {
    /// Write `config` (TOML; `{admin}` and `{wal}` are filled in) to a file in `dir`
    /// and start the binary `bin` with it.
    pub fn start(bin: &Path, dir: &Path, config: &str) -> Self {
        Self::start_with_env(bin, dir, config, &[])
    }

    /// Like [`Gateway::start`] with extra environment variables for the first run
    /// (e.g. `MKG_FAILPOINT`); later restarts run without them.
    pub fn start_with_env(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = config
            .replace("{admin}", &admin.to_string())
            .replace("{wal}", dir.join("wal").to_str().unwrap());
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let mut g = Self {
            child: None,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            admin,
            config: path,
            runs: 0,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        g.restart();
        g.env.clear();
        g
    }

    /// Environment variables for the later restarts (replacing any set before).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Start the process (again).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "gateway already running");
        self.runs += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("gateway-{}.log", self.runs))).unwrap();
        // RUST_LOG is MKG_TEST_LOG or "info"; a test that passes RUST_LOG = "" runs
        // without it (the config file's `log` then applies).
        let rust_log = self
            .env
            .iter()
            .find(|(k, _)| k == "RUST_LOG")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| std::env::var("MKG_TEST_LOG").unwrap_or_else(|_| "info".into()));
        let mut cmd = Command::new(&self.bin);
        if rust_log.is_empty() {
            cmd.env_remove("RUST_LOG");
        } else {
            cmd.env("RUST_LOG", rust_log);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(
                self.env
                    .iter()
                    .filter(|(k, _)| k != "RUST_LOG")
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Log of the latest run.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("gateway-{}.log", self.runs)))
            .unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Wait until `/healthz` answers (the WAL is open and the admin API serves).
    pub fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.try_wait() {
                panic!("gateway exited early ({status}):\n{}", self.log());
            }
            if http_get(self.admin, "/healthz").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the admin API answers and the broker acknowledged the gateway's
    /// subscriptions (SUBACK): what is published from then on reaches it even on a
    /// first connection, while `/readyz` may still say 503 (Kafka unreachable).
    pub fn wait_subscribed(&mut self) {
        self.wait_serving();
        let admin = self.admin;
        wait_until(
            "the gateway's MQTT subscriptions",
            Duration::from_secs(60),
            || {
                http_get(admin, "/status").is_ok_and(|(s, body)| {
                    s == 200
                        && serde_json::from_str::<serde_json::Value>(&body)
                            .is_ok_and(|v| v["mqtt"]["subscribed"] == true)
                })
            },
        );
    }

    /// Wait until `/readyz` says ready (MQTT connected, WAL writable).
    pub fn wait_ready(&mut self) {
        self.wait_serving();
        let admin = self.admin;
        wait_until("gateway /readyz", Duration::from_secs(60), || {
            http_get(admin, "/readyz").is_ok_and(|(s, _)| s == 200)
        });
    }

    /// GET a JSON document from the admin API.
    pub fn json(&self, path: &str) -> serde_json::Value {
        let (status, body) =
            http_get(self.admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Send a signal.
    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Wait for exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Run the gateway binary with arguments to completion; returns (exit code, stderr).
pub fn run_gateway_cmd(bin: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gateway binary");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Minimal HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[])
}

/// [`http_get`] with extra request headers, e.g. `("Authorization", "Bearer T")`.
pub fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, headers)
}

/// A request without a body (`GET`, `POST` with the query string...); returns
/// (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n{extra}\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The payload the checker understands: `publisher:seq:` then filler up to `size`.
pub fn payload(publisher: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{publisher}:{seq}:").into_bytes();
    while p.len() < size {
        p.push(b'x');
    }
    p
}

/// Publish messages to Mosquitto with QoS `qos`, returning those the broker
/// acknowledged (all of them unless `timeout` passes first).
pub fn publish(
    port: u16,
    qos: u8,
    messages: &[(String, Vec<u8>)],
    timeout: Duration,
) -> Vec<Published> {
    publish_as(port, None, qos, messages, timeout)
}

/// [`publish`] as `login` (user name, password) on a broker that asks for one.
pub fn publish_as(
    port: u16,
    login: Option<(&str, &str)>,
    qos: u8,
    messages: &[(String, Vec<u8>)],
    timeout: Duration,
) -> Vec<Published> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let login = login.map(|(u, p)| (u.to_string(), p.to_string()));
    let qos_v = match qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let messages = messages.to_vec();
    runtime().block_on(async move {
        let mut o = MqttOptions::new(unique("pub"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(200)
            .set_max_packet_size(64 << 20, 64 << 20)
            .set_clean_session(true);
        if let Some((user, password)) = login {
            o.set_credentials(user, password);
        }
        let (client, mut el) = AsyncClient::new(o, 1000);
        let n = messages.len();
        let sender = {
            let messages = messages.clone();
            tokio::spawn(async move {
                for (t, p) in messages {
                    if client.publish(t, qos_v, false, p).await.is_err() {
                        break;
                    }
                }
                client
            })
        };
        // rumqttc sends in order and Mosquitto acks QoS 1 in order: count acks.
        let mut acked = 0usize;
        let mut sent = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        while acked < n {
            let ev = tokio::select! {
                ev = el.poll() => ev,
                _ = tokio::time::sleep_until(deadline) => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) | Ok(Event::Incoming(Packet::PubComp(_))) => acked += 1,
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) if qos == 0 => {
                    sent += 1;
                    acked = sent;
                }
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
        let client = sender.await.unwrap();
        let _ = client.disconnect().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            tokio::select! {
                ev = el.poll() => if ev.is_err() || matches!(ev, Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        messages
            .into_iter()
            .take(acked)
            .map(|(topic, payload)| Published { topic, payload })
            .collect()
    })
}

/// Read records from `topics` until `done(records so far)` or `timeout`.
pub fn consume(
    bootstrap: &str,
    topics: &[&str],
    timeout: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("checker"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    // Assign every partition from the beginning (no consumer group rebalances), adding
    // topics as they appear.
    let mut assigned: HashMap<String, i32> = HashMap::new();
    let mut next_meta = Instant::now();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    // `done` may be costly (it scans everything read): ask it when idle or every 2000.
    let mut since_check = 0usize;
    loop {
        if since_check == 0 && done(&out) {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        if Instant::now() >= next_meta {
            next_meta = Instant::now() + Duration::from_millis(500);
            let mut grew = false;
            // One metadata request for all topics; stop asking once all exist (each
            // request disturbs the fetchers of partitions it does not mention).
            if let Ok(md) = consumer.fetch_metadata(None, Duration::from_secs(5)) {
                for t in topics {
                    let Some(mt) = md.topics().iter().find(|mt| mt.name() == *t) else {
                        continue;
                    };
                    let n = mt.partitions().len() as i32;
                    if mt.error().is_none() && n > assigned.get(*t).copied().unwrap_or(0) {
                        assigned.insert(t.to_string(), n);
                        grew = true;
                    }
                }
            }
            if assigned.len() == topics.len() {
                next_meta = deadline;
            }
            if grew {
                // Re-assign everything: known partitions continue from their position,
                // new ones start at the beginning.
                let pos = consumer.position().unwrap_or_default();
                let mut tpl = TopicPartitionList::new();
                for (t, n) in &assigned {
                    for p in 0..*n {
                        let off = pos
                            .find_partition(t, p)
                            .map(|e| e.offset())
                            .filter(|o| matches!(o, Offset::Offset(_)))
                            .unwrap_or(Offset::Beginning);
                        tpl.add_partition_offset(t, p, off).unwrap();
                    }
                }
                consumer.assign(&tpl).expect("assign");
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                since_check = (since_check + 1) % 2000;
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        headers.insert(
                            hdr.key.to_string(),
                            String::from_utf8_lossy(hdr.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Consumed {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    timestamp: m.timestamp().to_millis(),
                });
            }
            Some(Err(e)) => {
                // Unknown topic until the first record creates it: keep polling.
                eprintln!("consume: {e}");
            }
            None => since_check = 0,
        }
    }
    out
}

/// A `consume` stop condition: `n` distinct message ids seen (incremental, cheap).
pub fn until_distinct(n: usize) -> impl FnMut(&[Consumed]) -> bool {
    let mut seen: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut upto = 0;
    move |r| {
        for c in &r[upto..] {
            if let Some(id) = checker::message_id(&c.payload) {
                seen.insert(id.to_vec());
            }
        }
        upto = r.len();
        seen.len() >= n
    }
}

/// Count distinct (publisher, seq) ids among records.
pub fn distinct_ids(records: &[Consumed]) -> usize {
    let mut seen: HashMap<Vec<u8>, ()> = HashMap::new();
    for r in records {
        if let Some(id) = checker::message_id(&r.payload) {
            seen.insert(id.to_vec(), ());
        }
    }
    seen.len()
}
