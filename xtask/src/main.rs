//! `cargo xtask <task>`: the project's tasks in one place.
//!
//! ```text
//! cargo xtask ci [ARGS]         the whole test suite as CI runs it: installs what is
//!                               missing, then cargo fmt --check, clippy -D warnings,
//!                               cargo test --workspace (ARGS go to cargo test), the
//!                               Debian package test (amd64), the ARM cross builds with
//!                               their qemu smoke tests (aarch64, armv7) and the ARM
//!                               package tests in Debian arm64/armhf roots
//! cargo xtask bench [--quick]   the benchmark (docs/BENCHMARKS.md)
//! cargo xtask deb --arch A ...  build the Debian package (scripts/build-deb.sh)
//! cargo xtask cross [TARGET]    cross-compile for ARM (scripts/cross-build.sh)
//! cargo xtask demo [--keep]     run the gateway end to end on this machine
//! cargo xtask soak [ARGS]       the long fault-injection run (tests/src/soak.rs)
//! ```
//!
//! The steps that drive Debian's packaging tools, apt and the cross tool chain stay
//! shell scripts in `scripts/` (they are sequences of those tools' commands); what
//! measures or checks is Rust in the `mkg-e2e` crate, on the same harness as the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <ci|bench|deb|cross|demo|soak> [ARGS]
  ci [CARGO TEST ARGS]   install deps, fmt --check, clippy -D warnings, tests, deb, ARM smoke + debs
  bench [--quick] [...]  the benchmark (cargo xtask bench --help for its options)
  deb --arch A [...]     build the Debian package (scripts/build-deb.sh --help)
  cross [aarch64|armv7|all]  cross-compile for ARM (docs/CROSS.md)
  demo [--keep]          Mosquitto, Kafka and the gateway end to end on this machine
  soak [ARGS]            the long fault-injection run (docs/RELIABILITY.md)";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let root = root();
    let result = match task.as_str() {
        "ci" => ci(&root, &rest),
        "bench" => bench(&root, &rest),
        "deb" => script(&root, "build-deb.sh", &rest),
        "cross" => script(&root, "cross-build.sh", &rest),
        "demo" => script(&root, "demo.sh", &rest),
        "soak" => soak(&root, &rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "" => Err(USAGE.to_string()),
        other => Err(format!("unknown task {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate's parent directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run `cmd` in `root`, an error naming `what` unless it exits 0.
fn run(root: &Path, what: &str, cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .current_dir(root)
        .status()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo build --release --locked -q -p PACKAGE`.
fn release_build(package: &str) -> Command {
    let mut c = cargo();
    c.args(["build", "--release", "--locked", "-q", "-p", package]);
    c
}

fn bash(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(format!("scripts/{script}"));
    c
}

/// A script of `scripts/` with the given arguments.
fn script(root: &Path, name: &str, args: &[String]) -> Result<(), String> {
    run(root, name, bash(name).args(args))
}

/// The CI pipeline. Every step runs even on a fresh clone: the deps are installed
/// first, and each step names itself and its time so a red run says where it broke.
fn ci(root: &Path, test_args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let mut steps: Vec<(&str, Command)> = Vec::new();
    steps.push(("install dependencies", bash("install-deps.sh")));
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(("cargo fmt --check", fmt));
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("cargo clippy -D warnings", clippy));
    let mut test = cargo();
    test.args(["test", "--workspace", "--locked"])
        .args(test_args);
    steps.push(("cargo test --workspace", test));
    steps.push(("Debian package test", bash("test-deb.sh")));
    let mut smoke = bash("cross-smoke.sh");
    smoke.arg("all");
    steps.push(("ARM cross builds and smoke tests (aarch64, armv7)", smoke));
    let mut deb_arm = bash("test-deb-arm.sh");
    deb_arm.arg("all");
    steps.push(("ARM Debian package tests (arm64, armhf roots)", deb_arm));
    for (what, mut cmd) in steps {
        let t = Instant::now();
        eprintln!("xtask ci: == {what}");
        run(root, what, &mut cmd)?;
        eprintln!("xtask ci: ok {what} ({:.0} s)", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "xtask ci: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Build the release gateway and the bench tools, then run the bench.
fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    // Two builds: built together, cargo would compile the shipped binary with the
    // test-only `failpoints` feature (the tools depend on the gateway with it on).
    run(
        root,
        "release build of the gateway",
        &mut release_build("mqtt-kafka-gateway"),
    )?;
    run(
        root,
        "release build of the bench tools",
        release_build("mkg-e2e").args(
            ["bench", "loadgen", "latency", "walfill", "mqttsub", "kprod"]
                .iter()
                .flat_map(|b| ["--bin", b]),
        ),
    )?;
    let bin = target_dir(root).join("release/bench");
    run(root, "bench", Command::new(bin).args(args))
}

/// Install the brokers, build the soak and its gateway, run it.
fn soak(root: &Path, args: &[String]) -> Result<(), String> {
    script(root, "install-deps.sh", &[])?;
    run(
        root,
        "release build of the soak",
        release_build("mkg-e2e").arg("--bins"),
    )?;
    let bin = target_dir(root).join("release/soak");
    run(root, "soak", Command::new(bin).args(args))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}
