//! TLS to the MQTT broker and for the admin API's listener (rustls with the ring
//! provider: no system libraries, so the same code cross-compiles for ARM).

use std::sync::Arc;

use anyhow::Context;
use rumqttc::TlsConfiguration;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{AdminTls, MqttConfig};

/// Build the rumqttc TLS configuration from `[mqtt.tls]`.
pub fn client_config(m: &MqttConfig) -> anyhow::Result<TlsConfiguration> {
    let tls = m
        .tls
        .as_ref()
        .context("mqtt.tls: a TLS server URI needs [mqtt.tls] ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.ca_file)
        .with_context(|| format!("mqtt.tls.ca_file: cannot read {}", tls.ca_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("mqtt.tls.ca_file: bad PEM in {}", tls.ca_file.display()))?;
    if cas.is_empty() {
        anyhow::bail!(
            "mqtt.tls.ca_file: no certificate in {}",
            tls.ca_file.display()
        );
    }
    for ca in cas {
        roots.add(ca).with_context(|| {
            format!(
                "mqtt.tls.ca_file: unusable certificate in {}",
                tls.ca_file.display()
            )
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<_, _>>())
                .with_context(|| {
                    format!("mqtt.tls.client_cert_file: cannot read {}", cert.display())
                })?;
            // The key's content is never put in an error message.
            let key = PrivateKeyDer::from_pem_file(key).map_err(|_| {
                anyhow::anyhow!(
                    "mqtt.tls.client_key_file: no usable PEM private key in {}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .context("mqtt.tls: client certificate and key do not match")?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// The admin API's server configuration from `[admin.tls]`; `Err` is (key, reason)
/// and never holds the key's content.
pub fn server_config(tls: &AdminTls) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let cert = &tls.cert_file;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            (
                "admin.tls.cert_file",
                format!("cannot read a PEM certificate from {}: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "admin.tls.cert_file",
            format!("no certificate in {}", cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|_| {
        (
            "admin.tls.key_file",
            format!(
                "no usable PEM private key in {} (PKCS#8, PKCS#1 or SEC1)",
                tls.key_file.display()
            ),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ("admin.tls", format!("TLS protocol versions: {e}")))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| {
        (
            "admin.tls.key_file",
            format!("the key does not fit the certificate in admin.tls.cert_file: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
