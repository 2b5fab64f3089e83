#!/usr/bin/env bash
# Soak: a random schedule of faults (gateway SIGKILL / SIGTERM, Kafka SIGKILL /
# SIGSTOP) against a real Mosquitto and Kafka while publishers keep sending, then the
# checker's report (lost, duplicated, out of order, max backlog, drain time).
#   scripts/soak.sh [--minutes N (default 10)] [--seed S]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh >/dev/null
cargo build --release --locked -p mkg-e2e --bins
exec target/release/soak "$@"
