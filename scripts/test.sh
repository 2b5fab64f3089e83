#!/usr/bin/env bash
# Run the whole test suite, as CI does (.ci/run): installs what is missing
# (scripts/install-deps.sh), then `cargo fmt --check`, `cargo clippy -D warnings`, the
# unit, model and property tests, the admin API tests, the end-to-end tests against a
# real Mosquitto and a real Kafka 4.1.1 (KRaft), the Debian package test, the aarch64
# and armv7 cross builds with their qemu smoke tests, and the arm64/armhf package tests
# in Debian roots (scripts/test-deb-arm.sh). Extra arguments go to `cargo test`.
# The steps are `cargo xtask ci` (xtask/src/main.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || {
    echo "test: cargo not found: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
}
exec cargo xtask ci "$@"
