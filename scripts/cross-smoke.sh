#!/usr/bin/env bash
# End-to-end smoke test of the cross-compiled aarch64 gateway (docs/CROSS.md):
#   1. installs the cross tool chain and qemu-user (scripts/install-cross-deps.sh) and
#      the brokers (scripts/install-deps.sh);
#   2. builds the aarch64 release binary and checks it (scripts/cross-build.sh aarch64:
#      readelf -d, size, --version and check-config under qemu-aarch64);
#   3. runs the test binary `cross-smoke` (tests/src/bin/cross-smoke.rs, built for the
#      host) with MKG_CROSS_GATEWAY pointing at a wrapper that runs the aarch64 binary
#      under qemu-aarch64 (without -L): real Mosquitto and Kafka on free loopback
#      ports, messages in, records out, SIGKILL and restart, nothing lost.
# Exits non-zero if any step fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "[cross-smoke] $*" >&2; }

bash scripts/install-deps.sh >/dev/null
bash scripts/cross-build.sh aarch64

BIN="$ROOT/target/cross/aarch64-unknown-linux-gnu/release/mqtt-kafka-gateway"
[[ -x $BIN ]] || {
    say "ERROR: $BIN missing after scripts/cross-build.sh"
    exit 1
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/gateway-aarch64" <<EOF
#!/bin/sh
exec qemu-aarch64 "$BIN" "\$@"
EOF
chmod +x "$work/gateway-aarch64"

say "building the smoke test (host, rustup toolchain)"
cargo build --locked -p mkg-e2e --bin cross-smoke
say "running the smoke test against $BIN under qemu-aarch64"
MKG_CROSS_GATEWAY="$work/gateway-aarch64" "$ROOT/target/debug/cross-smoke"
