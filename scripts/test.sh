#!/usr/bin/env bash
# Run the whole test suite: unit tests, the WAL model test, the admin API tests and the
# end-to-end tests against a real Mosquitto and a real Kafka 4.1.1 (KRaft). Installs
# what is missing first (scripts/install-deps.sh). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh >/dev/null
cargo test --workspace --locked "$@"
bash scripts/test-deb.sh
bash scripts/cross-smoke.sh # aarch64 cross build (Debian rustc-web) + qemu end-to-end smoke: docs/CROSS.md
