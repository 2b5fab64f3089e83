//! The admin API client of the command line: plain HTTP/1.1 over a socket, or over TLS
//! when the gateway serves HTTPS (`[admin.tls]`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::config::Config;

/// The gateway's admin API does not answer.
pub const EXIT_UNREACHABLE: u8 = 4;
/// The admin API refused the request (401/403): no token, or a wrong one.
pub const EXIT_UNAUTHORIZED: u8 = 5;

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `--config`: `admin.listen` and `admin.token_file` from it.
    pub config: Option<PathBuf>,
    /// `--url http://HOST:PORT` (wins over the config's address).
    pub url: Option<String>,
    /// `--token-file` (wins over the config's).
    pub token_file: Option<PathBuf>,
    /// `--ca-file`: the CA to trust for an `https://` URL.
    pub ca_file: Option<PathBuf>,
}

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

fn failure(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// An admin API client for one command.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    host: String,
    token: Option<String>,
    /// HTTPS: the TLS configuration and the name the certificate must be for.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Client {
    /// Resolve `target`.
    pub fn new(target: &Target) -> Result<Self, Failure> {
        let loaded = match &target.config {
            Some(p) => {
                Some(Config::load(p).map_err(|e| failure(crate::cli::EXIT_CONFIG, e.to_string()))?)
            }
            None => None,
        };
        let config_tls = loaded.as_ref().and_then(|l| l.config.admin.tls.clone());
        let mut https = config_tls.is_some();
        let (host, addr) = match (&target.url, &loaded) {
            (Some(url), _) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
                https = match scheme {
                    "http" => false,
                    "https" => true,
                    _ => {
                        return Err(failure(
                            crate::cli::EXIT_CONFIG,
                            format!("--url {url}: http://HOST:PORT or https://HOST:PORT"),
                        ))
                    }
                };
                let hostport = rest.trim_end_matches('/');
                let addr = hostport
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        failure(EXIT_UNREACHABLE, format!("--url {url}: cannot resolve"))
                    })?;
                (hostport.to_string(), addr)
            }
            (None, Some(l)) => {
                let mut addr = l.config.admin.listen;
                // Listening on every address: ask on this host's loopback.
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        [127, 0, 0, 1].into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                (addr.to_string(), addr)
            }
            (None, None) => {
                let addr: SocketAddr = ([127, 0, 0, 1], 9080).into();
                (addr.to_string(), addr)
            }
        };
        let token = match (&target.token_file, &loaded) {
            (Some(f), _) => Some(read_token(f)?),
            (None, Some(l)) => l.admin_token.as_ref().map(|t| t.expose().to_string()),
            (None, None) => None,
        };
        let tls = if https {
            Some(tls_config(target, config_tls.as_ref(), &host)?)
        } else {
            None
        };
        Ok(Self {
            addr,
            host,
            token,
            tls,
        })
    }

    /// GET `path` and parse the JSON answer.
    pub fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path)
    }

    /// `method` `path` (no body) and parse the JSON answer.
    pub fn call(&self, method: &str, path: &str) -> Result<Value, Failure> {
        let (status, body) = self.request(method, path).map_err(|e| {
            failure(
                EXIT_UNREACHABLE,
                format!("cannot reach the gateway's admin API at {}: {e}", self.addr),
            )
        })?;
        match status {
            200 => serde_json::from_str(&body).map_err(|e| {
                failure(
                    1,
                    format!("the admin API answered something else than JSON: {e}"),
                )
            }),
            401 | 403 => Err(failure(
                EXIT_UNAUTHORIZED,
                format!(
                    "the admin API at {} refused the request ({status}): {}",
                    self.addr,
                    if self.token.is_some() {
                        "the token is not the one in the gateway's admin.token_file"
                    } else {
                        "it asks for a token: pass --config with admin.token_file, or --token-file"
                    }
                ),
            )),
            _ => Err(failure(
                1,
                format!("{method} {path}: {status} {}", body.trim_end()),
            )),
        }
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        match &self.tls {
            None => self.exchange(s, method, path),
            Some((config, name)) => {
                let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(std::io::Error::other)?;
                self.exchange(rustls::StreamOwned::new(conn, s), method, path)
            }
        }
    }

    fn exchange(
        &self,
        mut s: impl Read + Write,
        method: &str,
        path: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\nContent-Length: 0\r\n",
            self.host
        );
        if let Some(t) = &self.token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            // A TLS peer that closed without close_notify after a whole answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
            Err(e) => return Err(e),
        }
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP response"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
        Ok((status, body.to_string()))
    }
}

fn read_token(f: &PathBuf) -> Result<String, Failure> {
    let text = std::fs::read_to_string(f).map_err(|e| {
        failure(
            crate::cli::EXIT_CONFIG,
            format!("--token-file {}: {e}", f.display()),
        )
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// The TLS client configuration for an HTTPS admin API: `--ca-file` verifies the
/// certificate and its name the usual way; without it, the certificate of the
/// config's `admin.tls.cert_file` is the only one accepted (pinned: the CLI runs next to
/// the gateway, often on 127.0.0.1, which the certificate may not name).
fn tls_config(
    target: &Target,
    config_tls: Option<&crate::config::AdminTls>,
    host: &str,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    Failure,
> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let bad = |m: String| failure(crate::cli::EXIT_CONFIG, m);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS: {e}")))?;
    let name_part = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(name_part.to_string())
        .map_err(|e| bad(format!("{name_part:?} is not a host name or address: {e}")))?;
    let read = |path: &PathBuf, what: &str| -> Result<Vec<CertificateDer<'static>>, Failure> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| bad(format!("{what} {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(bad(format!("{what} {}: no certificate", path.display())));
        }
        Ok(certs)
    };
    let config = match (&target.ca_file, config_tls) {
        (Some(ca), _) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read(ca, "--ca-file")? {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("--ca-file {}: {e}", ca.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        (None, Some(t)) => {
            let leaf = read(&t.cert_file, "admin.tls.cert_file")?.swap_remove(0);
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { leaf, provider }))
                .with_no_client_auth()
        }
        (None, None) => {
            return Err(bad(
                "an https:// admin API needs --ca-file (the CA of its certificate), or --config with [admin.tls]".into(),
            ))
        }
    };
    Ok((Arc::new(config), name))
}

/// Accepts exactly one certificate, whatever name it is for.
#[derive(Debug)]
struct Pinned {
    leaf: rustls::pki_types::CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the gateway's certificate is not the one in admin.tls.cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
