#!/usr/bin/env bash
# End-to-end smoke test of the cross-compiled ARM gateways (docs/CROSS.md):
#   scripts/cross-smoke.sh [aarch64|armv7|all]        (default: all)
#   1. installs the cross tool chain and qemu-user (scripts/install-cross-deps.sh) and
#      the brokers (scripts/install-deps.sh);
#   2. builds the release binaries and checks them (scripts/cross-build.sh: readelf -d,
#      size, --version and check-config under qemu-user);
#   3. per target, runs the test binary `cross-smoke` (tests/src/bin/cross-smoke.rs,
#      built for the host) with MKG_CROSS_GATEWAY pointing at a wrapper that runs the
#      ARM binary under qemu-user: real Mosquitto and Kafka on free loopback ports,
#      messages in, records out, SIGKILL and restart, nothing lost.
#      aarch64: `qemu-aarch64 BIN` without -L (the multiarch libc6:arm64 in /lib).
#      armv7:   `qemu-arm -L ROOT BIN`, ROOT a Debian 12 armhf root from
#               scripts/debian-root.sh (cached tarball, unpacked for the run; needs
#               root): a released Debian armhf C library with its own ld.so.cache
#               (glibc 2.36, as on Raspberry Pi OS 12), not the cross tool chain's
#               copy in /usr/arm-linux-gnueabihf.
# Exits non-zero if any step fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "[cross-smoke] $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

which="${1:-all}"
case "$which" in
aarch64 | armv7) targets=("$which") ;;
all) targets=(aarch64 armv7) ;;
*) die "usage: $0 [aarch64|armv7|all]" ;;
esac
if [[ $which != aarch64 && $(id -u) != 0 ]]; then
    die "the armv7 smoke test unpacks a Debian armhf root (scripts/debian-root.sh): run as root"
fi

bash scripts/install-deps.sh >/dev/null
bash scripts/cross-build.sh "$which"

work="$(mktemp -d)"
cleanup() {
    # --one-file-system: nothing is mounted in the armhf root, but never cross into a mount.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

say "building the smoke test (host, rustup toolchain)"
cargo build --locked -p mkg-e2e --bin cross-smoke

for t in "${targets[@]}"; do
    t0=$SECONDS
    case "$t" in
    aarch64)
        BIN="$ROOT/target/cross/aarch64-unknown-linux-gnu/release/mqtt-kafka-gateway"
        run="qemu-aarch64 \"$BIN\""
        ;;
    armv7)
        BIN="$ROOT/target/cross/armv7-unknown-linux-gnueabihf/release/mqtt-kafka-gateway"
        bash scripts/debian-root.sh unpack armhf "$work/armhf-root"
        run="qemu-arm -L \"$work/armhf-root\" \"$BIN\""
        ;;
    esac
    [[ -x $BIN ]] || die "$BIN missing after scripts/cross-build.sh"
    cat >"$work/gateway-$t" <<EOF
#!/bin/sh
exec $run "\$@"
EOF
    chmod +x "$work/gateway-$t"
    say "$t: running the smoke test: $run"
    MKG_CROSS_GATEWAY="$work/gateway-$t" "$ROOT/target/debug/cross-smoke" ||
        die "$t: smoke test failed"
    say "$t: smoke test passed ($((SECONDS - t0)) s)"
done
say "done: ${targets[*]}"
