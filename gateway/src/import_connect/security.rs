//! SASL and TLS to Kafka: `sasl.mechanism` and `sasl.jaas.config` (the password goes
//! to a file of its own, `kafka.sasl_password_file`), and the Java trust and key stores,
//! which librdkafka reads only as PEM files.
//!
//! A PKCS#12 keystore could be given to librdkafka as it is (`ssl.keystore.location`),
//! but its password (`ssl.keystore.password`) would then have to sit in the
//! configuration file: librdkafka has no file form for it. Keystores are converted to
//! PEM files instead (commands in the output), the key unencrypted with mode 0600, as
//! the gateway's other secrets are kept.

use std::path::{Path, PathBuf};

use super::jaas;
use super::plan::{toml_str, Mapper, OutFile, Setting};
use super::producer::{property, Props};

/// `sasl.mechanism` -> `sasl.mechanisms`, `sasl.jaas.config` -> `sasl.username` and
/// the password file.
pub fn sasl(m: &mut Mapper, props: &mut Props) {
    let mechanism = props.remove("sasl.mechanism");
    let jaas = props.remove("sasl.jaas.config");
    let mech = mechanism
        .as_ref()
        .map(|p| p.got.value.to_ascii_uppercase())
        .unwrap_or_else(|| "GSSAPI".into());
    let source = match &mechanism {
        Some(p) => p.got.source(),
        None => "producer.sasl.mechanism not set (Java's default: GSSAPI)".into(),
    };
    match mech.as_str() {
        "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => property(
            m,
            "sasl.mechanisms",
            &mech,
            vec![source, "Java's sasl.mechanism is sasl.mechanisms in librdkafka.".into()],
        ),
        "GSSAPI" => m.error(format!(
            "{source}: GSSAPI (Kerberos) is not supported by the gateway's librdkafka build; use PLAIN or SCRAM"
        )),
        "OAUTHBEARER" => m.error(format!(
            "{source}: OAUTHBEARER needs Java login callbacks (or an OIDC client secret written into librdkafka's properties), which cannot be imported; use PLAIN or SCRAM"
        )),
        _ => m.error(format!("{source}: unknown SASL mechanism")),
    }
    let Some(jaas_prop) = jaas else {
        m.error(
            "security.protocol is SASL_* but the files hold no sasl.jaas.config: the credentials came from a JAAS file (java.security.auth.login.config in KAFKA_OPTS). Add producer.sasl.jaas.config to the worker's file and import again",
        );
        return;
    };
    let source = jaas_prop.got.source();
    let entry = match jaas::parse(&jaas_prop.got.value) {
        Ok(e) => e,
        Err(e) => {
            m.error(format!("{}: cannot be read: {e}", jaas_prop.got.key));
            return;
        }
    };
    let module = entry.module.rsplit('.').next().unwrap_or_default();
    if module != "PlainLoginModule" && module != "ScramLoginModule" {
        m.error(format!(
            "{}: login module {} cannot be imported; the gateway takes PlainLoginModule or ScramLoginModule (a user name and a password)",
            jaas_prop.got.key, entry.module
        ));
        return;
    }
    let (Some(user), Some(password)) = (entry.option("username"), entry.option("password")) else {
        m.error(format!(
            "{}: {module} without username and password options",
            jaas_prop.got.key
        ));
        return;
    };
    let others: Vec<&str> = entry
        .options
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "username" && *k != "password")
        .collect();
    if !others.is_empty() {
        m.note(
            &jaas_prop.got.key,
            format!(
                "{module} options {} are not imported (librdkafka takes a user name and a password)",
                others.join(", ")
            ),
        );
    }
    if password.is_empty() || password.ends_with(['\n', '\r']) {
        m.error(format!(
            "{}: the password is empty or ends with a line break, which kafka.sasl_password_file cannot hold",
            jaas_prop.got.key
        ));
        return;
    }
    property(
        m,
        "sasl.username",
        user,
        vec![format!("{source}: the user name of its {module}")],
    );
    let path = m.out.file("kafka.password");
    m.plan.files.push(OutFile {
        path: path.clone(),
        content: format!("{password}\n"),
        secret: true,
        what: "the Kafka SASL password",
    });
    m.plan.kafka.push(Setting::new(
        "sasl_password_file",
        toml_str(&path.display().to_string()),
        vec![format!(
            "{source}: its password, written to this file (mode 0600)"
        )],
    ));
}

/// The trust store, the key store and the host name check.
pub fn tls(m: &mut Mapper, props: &mut Props) {
    truststore(m, props);
    keystore(m, props);
    if let Some(e) = props.remove("ssl.endpoint.identification.algorithm") {
        let value = match e.got.value.to_ascii_lowercase().as_str() {
            "" => "none",
            "https" => "https",
            _ => {
                m.error(format!("{}: not https or empty", e.got.source()));
                return;
            }
        };
        let mut comments = vec![e.got.source()];
        if value == "none" {
            comments.push("Empty: no host name check; librdkafka spells that none.".into());
        }
        property(m, "ssl.endpoint.identification.algorithm", value, comments);
    }
}

fn store_type(props: &mut Props, key: &str) -> (String, Option<String>) {
    match props.remove(key) {
        Some(t) => (t.got.value.to_ascii_uppercase(), Some(t.got.source())),
        None => ("JKS".into(), None),
    }
}

fn truststore(m: &mut Mapper, props: &mut Props) {
    let (ty, ty_source) = store_type(props, "ssl.truststore.type");
    let location = props.remove("ssl.truststore.location");
    let certificates = props.remove("ssl.truststore.certificates");
    if let Some(p) = props.remove("ssl.truststore.password") {
        m.not_needed(
            &p.got,
            "opens the Java truststore; the PEM file librdkafka reads has no password",
        );
    }
    let mut comments: Vec<String> = ty_source.into_iter().collect();
    match (certificates, location) {
        (Some(c), location) => {
            if let Some(l) = location {
                m.not_needed(&l.got, "ssl.truststore.certificates is used instead");
            }
            let path = m.out.file("kafka-ca.pem");
            m.plan.files.push(OutFile {
                path: path.clone(),
                content: format!("{}\n", c.got.value),
                secret: false,
                what: "the Kafka CA certificates",
            });
            comments.insert(0, format!("{}: written to this file", c.got.source()));
            property(m, "ssl.ca.location", &path.display().to_string(), comments);
        }
        (None, Some(l)) if ty == "PEM" => {
            m.refers_to(&l.got.key, Path::new(&l.got.value));
            comments.insert(0, l.got.source());
            property(m, "ssl.ca.location", &l.got.value, comments);
        }
        (None, Some(l)) if ty == "JKS" || ty == "PKCS12" => {
            let pem = m.out.file("kafka-ca.pem");
            let command = format!(
                "keytool -list -rfc -keystore {} -storetype {ty} | sed -n '/-BEGIN CERTIFICATE-/,/-END CERTIFICATE-/p' > {}",
                sh(&l.got.value),
                sh(&pem.display().to_string())
            );
            m.note(
                &l.got.key,
                format!(
                    "librdkafka cannot read the {ty} truststore {}: export its certificates as PEM with `{command}` (keytool asks for the truststore password), then uncomment ssl.ca.location in the output",
                    l.got.value
                ),
            );
            comments.insert(0, l.got.source());
            comments.extend([
                format!("librdkafka cannot read a {ty} truststore. Export its certificates as PEM"),
                "(keytool asks for the truststore password), then uncomment the line below:".into(),
                format!("  {command}"),
            ]);
            m.plan.properties.push(Setting::commented(
                &toml_str("ssl.ca.location"),
                toml_str(&pem.display().to_string()),
                comments,
            ));
        }
        (None, Some(l)) => m.error(format!(
            "{}: a truststore of type {ty} cannot be imported (JKS, PKCS12 or PEM)",
            l.got.source()
        )),
        (None, None) => {
            comments.insert(
                0,
                "producer.ssl.truststore.location not set: Java trusted the JVM's default CAs"
                    .into(),
            );
            comments.push("probe: librdkafka looks for the system's CA certificates.".into());
            property(m, "ssl.ca.location", "probe", comments);
        }
    }
}

fn keystore(m: &mut Mapper, props: &mut Props) {
    let (ty, ty_source) = store_type(props, "ssl.keystore.type");
    let location = props.remove("ssl.keystore.location");
    let chain = props.remove("ssl.keystore.certificate.chain");
    let key = props.remove("ssl.keystore.key");
    let key_password = props.remove("ssl.key.password");
    for p in [props.remove("ssl.keystore.password"), key_password.clone()]
        .into_iter()
        .flatten()
    {
        m.not_needed(
            &p.got,
            "a Java keystore password: librdkafka is given an unencrypted PEM key (mode 0600) instead, so no password is written",
        );
    }
    let cert_file = m.out.file("kafka-client.pem");
    let key_file = m.out.file("kafka-client.key");
    if chain.is_some() || key.is_some() {
        let (Some(chain), Some(key)) = (chain, key) else {
            m.error("ssl.keystore.certificate.chain and ssl.keystore.key go together: set both or neither");
            return;
        };
        if key_password.is_some() {
            m.error(format!(
                "{}: the key is encrypted (ssl.key.password), and the gateway writes no key password; decrypt it (openssl pkey) and import again",
                key.got.key
            ));
            return;
        }
        m.plan.files.push(OutFile {
            path: cert_file.clone(),
            content: format!("{}\n", chain.got.value),
            secret: false,
            what: "the Kafka client certificate",
        });
        m.plan.files.push(OutFile {
            path: key_file.clone(),
            content: format!("{}\n", key.got.value),
            secret: true,
            what: "the Kafka client key",
        });
        let c = vec![format!("{}: written to this file", chain.got.source())];
        property(
            m,
            "ssl.certificate.location",
            &cert_file.display().to_string(),
            c,
        );
        let k = vec![format!(
            "{}: written to this file (mode 0600)",
            key.got.source()
        )];
        property(m, "ssl.key.location", &key_file.display().to_string(), k);
        return;
    }
    let Some(l) = location else { return };
    let loc = l.got.value.clone();
    if ty == "PEM" && key_password.is_none() {
        m.refers_to(&l.got.key, Path::new(&loc));
        for name in ["ssl.certificate.location", "ssl.key.location"] {
            let c = vec![
                l.got.source(),
                "One PEM file holds the key and the chain.".into(),
            ];
            property(m, name, &loc, c);
        }
        return;
    }
    let key_out = sh(&key_file.display().to_string());
    let cert_out = sh(&cert_file.display().to_string());
    let key_cmd = |from: &str| {
        format!("(umask 077; openssl pkcs12 -in {from} -nocerts -nodes -out {key_out})")
    };
    let cert_cmd =
        |from: &str| format!("openssl pkcs12 -in {from} -clcerts -nokeys -out {cert_out}");
    let loc_sh = sh(&loc);
    let (commands, cert): (Vec<String>, PathBuf) = match ty.as_str() {
        "PEM" => (
            vec![format!(
                "(umask 077; openssl pkey -in {loc_sh} -out {key_out})"
            )],
            PathBuf::from(&loc),
        ),
        "PKCS12" => (vec![cert_cmd(&loc_sh), key_cmd(&loc_sh)], cert_file.clone()),
        "JKS" => {
            let p12 = m.out.file("kafka-client.p12");
            let p12 = sh(&p12.display().to_string());
            (
                vec![
                    format!(
                        "keytool -importkeystore -srckeystore {loc_sh} -srcstoretype JKS -destkeystore {p12} -deststoretype PKCS12"
                    ),
                    cert_cmd(&p12),
                    key_cmd(&p12),
                    format!("rm {p12}"),
                ],
                cert_file.clone(),
            )
        }
        _ => {
            m.error(format!(
                "{}: a keystore of type {ty} cannot be imported (JKS, PKCS12 or PEM)",
                l.got.source()
            ));
            return;
        }
    };
    m.note(
        &l.got.key,
        format!(
            "librdkafka is given the client certificate and an unencrypted key as PEM files, so that no keystore or key password sits in the configuration: run `{}` (it asks for the passwords), then uncomment ssl.certificate.location and ssl.key.location in the output",
            commands.join(" && ")
        ),
    );
    let mut comments = vec![l.got.source()];
    comments.extend(ty_source);
    comments
        .push("Convert the keystore to PEM files (the tools ask for its passwords; the key".into());
    comments
        .push("is written unencrypted with mode 0600), then uncomment both lines below:".into());
    comments.extend(commands.iter().map(|c| format!("  {c}")));
    m.plan.properties.push(Setting::commented(
        &toml_str("ssl.certificate.location"),
        toml_str(&cert.display().to_string()),
        comments,
    ));
    m.plan.properties.push(Setting::commented(
        &toml_str("ssl.key.location"),
        toml_str(&key_file.display().to_string()),
        Vec::new(),
    ));
}

/// `path` quoted for a POSIX shell when it needs to be.
fn sh(path: &str) -> String {
    if !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,=%".contains(c))
    {
        path.to_string()
    } else {
        format!("'{}'", path.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shell_quoting() {
        assert_eq!(super::sh("/etc/kafka/trust.jks"), "/etc/kafka/trust.jks");
        assert_eq!(
            super::sh("/etc/my stores/it's.jks"),
            "'/etc/my stores/it'\\''s.jks'"
        );
    }
}
