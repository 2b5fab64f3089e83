//! The gateway binary as the end-to-end tests run it: the same entry point as the
//! shipped binary, with the test-only failpoints compiled in.
fn main() -> std::process::ExitCode {
    gateway::cli::main()
}
