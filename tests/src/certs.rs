//! Test certificates made with the `openssl` command: a CA and certificates it signs,
//! for TLS tests against the real brokers and the admin API.

use std::path::Path;
use std::process::Command;

/// Run `openssl ARGS` in `dir`; `Err` has its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// A CA `CA.pem` / `CA.key` in `dir` (P-256, valid two days).
pub fn make_ca(dir: &Path, ca: &str) -> Result<(), String> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=mkg test {ca}"),
        ],
    )
}

/// `NAME.pem` / `NAME.key` in `dir`, for common name `cn` and the subject alternative
/// names `san` (e.g. `DNS:localhost,IP:127.0.0.1`), signed by the CA `ca`.
pub fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, san: &str) -> Result<(), String> {
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).map_err(|e| e.to_string())?;
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    )
}
