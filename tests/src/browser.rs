//! A real headless Chromium for end-to-end tests of the operator console, driven
//! through chromedriver's W3C WebDriver HTTP API (plain HTTP/1.1 and JSON, no client
//! library).
//!
//! Debian's `chromium` and `chromium-driver` packages (`scripts/install-deps.sh`
//! installs them). Each [`Browser`] starts its own chromedriver on a free loopback port
//! and one session with a fresh profile directory; dropping it ends the session and
//! kills chromedriver's process group, so no Chromium outlives a failed test.
//! Chromium's own background traffic (updates, sync, QUIC probes) is switched off:
//! this machine's network refuses it and the test must not depend on it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

/// Debian's Chromium launcher.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver, same version as Chromium.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The key of an element reference in WebDriver answers (W3C).
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Longest a WebDriver command may take (navigation and screenshots included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium session; ended and killed on drop.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Start chromedriver and a headless Chromium with a `width` x `height` window.
    /// Fails, naming `scripts/install-deps.sh`, when either is missing.
    pub fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(bin).exists() {
                bail!(
                    "{bin} is missing: install the Debian packages chromium and chromium-driver \
                     with `sudo bash scripts/install-deps.sh`"
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("mkg-browser").tempdir()?;
        let port = crate::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: Drop kills chromedriver and every Chromium process
        // it started, even when the session could not be ended.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd
            .spawn()
            .with_context(|| format!("cannot start {CHROMEDRIVER}"))?;
        let mut b = Self {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: None,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match b.call("GET", "/status", None) {
                Ok(v) if v["ready"] == true => break,
                _ if Instant::now() >= deadline => {
                    bail!("chromedriver not ready after 30 s:\n{}", b.driver_log())
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let profile = b.dir.path().join("profile");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--hide-scrollbars".into(),
            "--force-device-scale-factor=1".into(),
            "--lang=en-US".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let v = b
            .call("POST", "/session", Some(caps))
            .with_context(|| format!("new session:\n{}", b.driver_log()))?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {v}"))?;
        b.session = Some(id.to_string());
        Ok(b)
    }

    /// Load `url` and wait for its `load` event.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", json!({ "url": url }))?;
        Ok(())
    }

    /// The first element matching `css` (a WebDriver element id).
    pub fn find(&self, css: &str) -> anyhow::Result<String> {
        let v = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .with_context(|| format!("find {css}"))?;
        v[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("find {css}: {v}"))
    }

    /// The rendered text of the first element matching `css` (empty when hidden).
    pub fn text(&self, css: &str) -> anyhow::Result<String> {
        let id = self.find(css)?;
        let v = self.cmd_get(&format!("/element/{id}/text"))?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Click the first element matching `css` as a user would (it must be visible
    /// and not covered).
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("/element/{id}/click"), json!({}))
            .with_context(|| format!("click {css}"))?;
        Ok(())
    }

    /// Type `text` into the first element matching `css`, after clearing it.
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("/element/{id}/clear"), json!({}))
            .with_context(|| format!("clear {css}"))?;
        if !text.is_empty() {
            self.cmd(
                "POST",
                &format!("/element/{id}/value"),
                json!({ "text": text }),
            )
            .with_context(|| format!("type into {css}"))?;
        }
        Ok(())
    }

    /// Run `script` (a function body; `arguments` holds `args`) in the page and
    /// return what it returns.
    pub fn script(&self, script: &str, args: &[Value]) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
    }

    /// An attribute of the first element matching `css` (`None`: no such element or
    /// attribute).
    pub fn attr(&self, css: &str, name: &str) -> anyhow::Result<Option<String>> {
        let v = self.script(
            "var e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
            &[css.into(), name.into()],
        )?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Whether an element matching `css` exists and is rendered.
    pub fn visible(&self, css: &str) -> anyhow::Result<bool> {
        let v = self.script(
            "var e = document.querySelector(arguments[0]); return !!e && e.getClientRects().length > 0;",
            &[css.into()],
        )?;
        Ok(v == true)
    }

    /// The viewport as a PNG.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let v = self.cmd_get("/screenshot")?;
        base64_decode(v.as_str().ok_or_else(|| anyhow!("screenshot: {v}"))?)
    }

    /// The whole page, not just the viewport, as a PNG (Chromium's DevTools protocol
    /// through chromedriver).
    pub fn full_page_screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let metrics = self.cdp("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let (w, h) = (size["width"].as_f64(), size["height"].as_f64());
        let (Some(w), Some(h)) = (w, h) else {
            bail!("no page size in {metrics}");
        };
        let shot = self.cdp(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
        )?;
        base64_decode(
            shot["data"]
                .as_str()
                .ok_or_else(|| anyhow!("screenshot: {shot}"))?,
        )
    }

    /// Write `png` to `path` (directories created).
    pub fn save_png(path: &Path, png: &[u8]) -> anyhow::Result<PathBuf> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Emulate a device screen: `width` x `height` CSS pixels at `scale` device pixels
    /// each, as a phone (`mobile`: the page's viewport meta applies) or not
    /// (Chromium's DevTools protocol through chromedriver).
    pub fn emulate_screen(
        &self,
        width: u32,
        height: u32,
        scale: f64,
        mobile: bool,
    ) -> anyhow::Result<()> {
        self.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile}),
        )?;
        Ok(())
    }

    /// A DevTools protocol command (chromedriver's `goog/cdp/execute`).
    fn cdp(&self, cmd: &str, params: Value) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        )
        .with_context(|| format!("DevTools {cmd}"))
    }

    /// What the page wrote to the console, and the browser's own messages about it
    /// (failed loads, Content-Security-Policy violations), since the last call.
    pub fn console_log(&self) -> anyhow::Result<Vec<String>> {
        let v = self.cmd("POST", "/se/log", json!({"type": "browser"}))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{} {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// chromedriver's log, for failure messages.
    pub fn driver_log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// End the session (Chromium quits); the driver stays until drop.
    pub fn quit(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self.call("DELETE", &format!("/session/{id}"), None);
        }
    }

    fn session(&self) -> anyhow::Result<&str> {
        self.session
            .as_deref()
            .ok_or_else(|| anyhow!("no browser session"))
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session()?);
        self.call(method, &path, Some(body))
    }

    fn cmd_get(&self, path: &str) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session()?);
        self.call("GET", &path, None)
    }

    /// One WebDriver request: the answer's `value`, or its error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http(self.addr, method, path, &body)?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: {status}: {text}"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if status != 200 {
            bail!(
                "{method} {path}: {status} {}: {}",
                value["error"],
                value["message"]
            );
        }
        Ok(value)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.quit();
        let pid = self.driver.id() as i32;
        crate::kill(-pid, libc::SIGKILL);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A request with a JSON body (possibly empty) over a fresh connection; returns
/// (status, body). chromedriver keeps connections open whatever the request says, so
/// the answer ends where its `Content-Length` (or last chunk) says.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut read = |buf: &mut Vec<u8>| -> anyhow::Result<bool> {
        let n = s
            .read(&mut chunk)
            .with_context(|| format!("{method} {path}: reading the answer"))?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !read(&mut buf)? {
            bail!("{method} {path}: closed before the end of the head");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line: {head}"))?;
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let start = end + 4;
    let payload = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !buf[start..].ends_with(b"0\r\n\r\n") {
            if !read(&mut buf)? {
                break;
            }
        }
        dechunk(&buf[start..])?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse()?;
        while buf.len() < start + len {
            if !read(&mut buf)? {
                bail!("{method} {path}: closed before the end of the body");
            }
        }
        buf[start..start + len].to_vec()
    } else {
        while read(&mut buf)? {}
        buf[start..].to_vec()
    };
    Ok((status, String::from_utf8(payload)?))
}

/// The body of a `Transfer-Encoding: chunked` message.
fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("chunked body cut short"))?;
        let size = std::str::from_utf8(&data[..line])?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("chunk of {size} bytes cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Standard base64 (RFC 4648, padding optional).
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = ((acc << 6) | u32::from(v)) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_chunks_decode() {
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert!(base64_decode("Zm9v!").is_err());
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(dechunk(b"9\r\nWiki").is_err());
    }
}
