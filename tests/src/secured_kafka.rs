//! A Kafka that asks for credentials, as production clusters do: SASL_SSL with
//! SCRAM-SHA-512 and SASL_PLAINTEXT with PLAIN next to the harness's own PLAINTEXT
//! listener, and optionally the broker's authorizer with ACLs.
//!
//! The PLAINTEXT listener (the controller's and the broker's own, and the tests'
//! consumers and admin calls) is anonymous and a super user; the SASL listeners
//! authenticate the users given, whose rights, with the authorizer on, are only the
//! ACLs a test grants with [`SecuredKafka::allow`].

use std::path::{Path, PathBuf};

use crate::{certs, free_port, run_script, Kafka};

/// The users' names and passwords, the SASL listeners' ports and the CA that signed
/// the SASL_SSL listener's certificate.
#[derive(Debug)]
pub struct SecuredKafka {
    /// The broker (its `port` is the anonymous PLAINTEXT listener).
    pub kafka: Kafka,
    /// SASL_PLAINTEXT listener, mechanism PLAIN.
    pub sasl_plaintext_port: u16,
    /// SASL_SSL listener, mechanism SCRAM-SHA-512, certificate for 127.0.0.1 and
    /// localhost signed by [`SecuredKafka::ca_file`].
    pub sasl_ssl_port: u16,
    /// PEM of the CA that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM of another CA, which the broker's certificate does not chain to.
    pub other_ca_file: PathBuf,
}

impl SecuredKafka {
    /// Start a broker whose SASL listeners accept `users` (name, password): PLAIN on
    /// SASL_PLAINTEXT, SCRAM-SHA-512 (credentials created when the log dir is
    /// formatted) on SASL_SSL. With `authorizer`, a SASL user may do only what
    /// [`SecuredKafka::allow`] grants. Certificates are made in `cert_dir`.
    pub fn start(cert_dir: &Path, users: &[(&str, &str)], authorizer: bool) -> Self {
        certs::make_ca(cert_dir, "kafka-ca").unwrap_or_else(|e| panic!("{e}"));
        certs::make_ca(cert_dir, "other-ca").unwrap_or_else(|e| panic!("{e}"));
        certs::make_cert(
            cert_dir,
            "kafka-ca",
            "kafka-broker",
            "localhost",
            "DNS:localhost,IP:127.0.0.1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let store_password = "broker-keystore-pw";
        certs::openssl(
            cert_dir,
            &[
                "pkcs12",
                "-export",
                "-in",
                "kafka-broker.pem",
                "-inkey",
                "kafka-broker.key",
                "-name",
                "broker",
                "-out",
                "kafka-broker.p12",
                "-passout",
                &format!("pass:{store_password}"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));

        let mut k = Kafka::not_started();
        let (sp, ss) = (free_port(), free_port());
        let (p, c) = (k.port, k.controller_port);
        let plain_users: String = users
            .iter()
            .map(|(u, pw)| format!(" user_{u}=\"{pw}\""))
            .collect();
        let mut props = format!(
            "listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SASL_PLAINTEXT://127.0.0.1:{sp},SASL_SSL://127.0.0.1:{ss}
advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_PLAINTEXT://127.0.0.1:{sp},SASL_SSL://127.0.0.1:{ss}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required{plain_users};
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location={}
listener.name.sasl_ssl.ssl.keystore.password={store_password}
",
            cert_dir.join("kafka-broker.p12").display()
        );
        if authorizer {
            props.push_str(
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
",
            );
        }
        let scram: Vec<String> = users.iter().map(|(u, pw)| format!("{u}:{pw}")).collect();
        k.env.push(("MKG_KAFKA_EXTRA_PROPS".into(), props));
        k.env
            .push(("MKG_KAFKA_SCRAM_USERS".into(), scram.join(" ")));
        k.start_again();
        Self {
            kafka: k,
            sasl_plaintext_port: sp,
            sasl_ssl_port: ss,
            ca_file: cert_dir.join("kafka-ca.pem"),
            other_ca_file: cert_dir.join("other-ca.pem"),
        }
    }

    /// `127.0.0.1:PORT` of the SASL_SSL listener.
    pub fn sasl_ssl(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_ssl_port)
    }

    /// `127.0.0.1:PORT` of the SASL_PLAINTEXT listener.
    pub fn sasl_plaintext(&self) -> String {
        format!("127.0.0.1:{}", self.sasl_plaintext_port)
    }

    /// Grant `user` the `operations` (e.g. `["Write", "Describe"]`) on the topics whose
    /// names start with `topic_prefix`.
    pub fn allow(&self, user: &str, operations: &[&str], topic_prefix: &str) {
        let dir = self.kafka.dir.path().to_str().unwrap().to_string();
        let principal = format!("User:{user}");
        let mut args = vec![
            "acl",
            &dir,
            "--add",
            "--allow-principal",
            &principal,
            "--resource-pattern-type",
            "prefixed",
            "--topic",
            topic_prefix,
        ];
        for op in operations {
            args.push("--operation");
            args.push(op);
        }
        run_script("kafka-local.sh", &args).unwrap_or_else(|e| panic!("{e}"));
    }
}
