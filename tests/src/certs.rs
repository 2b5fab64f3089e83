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
/// names `san` (e.g. `DNS:localhost,IP:127.0.0.1`), signed by the CA `ca`, valid two days.
pub fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, san: &str) -> Result<(), String> {
    make_csr(dir, name, cn, san)?;
    let (ext, csr, pem) = (
        format!("{name}.ext"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
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

/// [`make_cert`], but valid only on 1 and 2 January 2020: expired.
pub fn make_expired_cert(
    dir: &Path,
    ca: &str,
    name: &str,
    cn: &str,
    san: &str,
) -> Result<(), String> {
    make_csr(dir, name, cn, san)?;
    // `openssl x509 -req` cannot set a start date (OpenSSL 3.0): `openssl ca` can.
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
         default_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("index.txt"), "").map_err(|e| e.to_string())?;
    std::fs::write(dir.join("serial"), "1000\n").map_err(|e| e.to_string())?;
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            &format!("{ca}.pem"),
            "-keyfile",
            &format!("{ca}.key"),
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200102000000Z",
            "-extfile",
            &format!("{name}.ext"),
            "-notext",
        ],
    )
}

/// A key `NAME.key`, a request `NAME.csr` for `cn` and the extension file `NAME.ext`.
fn make_csr(dir: &Path, name: &str, cn: &str, san: &str) -> Result<(), String> {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .map_err(|e| e.to_string())?;
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
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    )
}
