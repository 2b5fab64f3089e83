#!/usr/bin/env bash
# Cross-compiles the release binary of the gateway for ARM on this Debian 12 x86-64
# machine, without Docker, then checks it:
#   scripts/cross-build.sh [aarch64|armv7|all]        (default: all)
# Output: target/cross/<triple>/release/mqtt-kafka-gateway (the Debian-package
# helper picks the binaries up from there).
#
# Route (docs/CROSS.md): rustup's cargo with Debian's rustc-web as the compiler
# (RUSTC=/usr/bin/rustc) and Debian's target standard library; the C parts
# (librdkafka via rdkafka's cmake-build feature, vendored OpenSSL, static curl, zlib,
# zstd) are built by the aarch64-linux-gnu / arm-linux-gnueabihf gcc and g++.
# CARGO_TARGET_DIR=target/cross keeps these artifacts apart from the rustup-built host
# artifacts in target/ (the two compilers would otherwise invalidate each other).
#
# After each build:
#   - readelf -d: the binary may only NEED libraries from the C library and the
#     compiler runtime (libc, libm, libgcc_s, ld-linux, and glibc's libpthread, libdl,
#     librt stubs); anything else fails the script, since a stock Raspberry Pi OS
#     has nothing more;
#   - prints the (already stripped) size;
#   - runs `--version` and `check-config` on the example config under qemu-user,
#     WITHOUT -L for aarch64 (the interpreter is the multiarch libc6:arm64 in /lib;
#     mixing in the cross toolchain's libc makes threaded programs hang), and with
#     -L /usr/arm-linux-gnueabihf for armv7 (armhf is not a dpkg architecture here,
#     so the cross toolchain's libc is the only armhf libc on the machine).
#
# Environment: MKG_CROSS_SKIP_DEPS=1 skips scripts/install-cross-deps.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "[cross-build] $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

which="${1:-all}"
case "$which" in
aarch64 | armv7 | all) ;;
*) die "usage: $0 [aarch64|armv7|all]" ;;
esac
targets=()
[[ $which == aarch64 || $which == all ]] && targets+=(aarch64)
[[ $which == armv7 || $which == all ]] && targets+=(armv7)

if [[ ${MKG_CROSS_SKIP_DEPS:-0} != 1 ]]; then
    bash "$ROOT/scripts/install-cross-deps.sh" "$which"
fi

CACHE_ROOT="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"
RUSTC_DEB=/usr/bin/rustc
[[ -x $RUSTC_DEB ]] || die "$RUSTC_DEB missing: run scripts/install-cross-deps.sh"
CARGO="$(command -v cargo)" || die "cargo not found: install Rust with rustup"
say "cargo: $CARGO ($("$CARGO" --version)); rustc: $RUSTC_DEB ($("$RUSTC_DEB" --version))"

# NEEDED entries a stock glibc system always has.
allowed_needed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-aarch64\.so\.1|ld-linux-armhf\.so\.3)$'

build_one() {
    local arch=$1 triple gnu qemu qemu_args=() sysroot_flags=""
    case "$arch" in
    aarch64)
        triple=aarch64-unknown-linux-gnu
        gnu=aarch64-linux-gnu
        qemu=qemu-aarch64
        ;;
    armv7)
        triple=armv7-unknown-linux-gnueabihf
        gnu=arm-linux-gnueabihf
        qemu=qemu-arm
        qemu_args=(-L /usr/arm-linux-gnueabihf)
        local rv sysroot
        rv="$(dpkg-query -W -f='${Version}' rustc-web)"
        sysroot="$CACHE_ROOT/rust-sysroot-armv7-$rv"
        [[ -f $sysroot/.complete ]] ||
            die "no armv7 Rust std for rustc-web $rv in $sysroot: run scripts/install-cross-deps.sh armv7"
        # Target artifacts only: with --target, cargo does not pass these flags to
        # build scripts and proc macros, which keep Debian's default sysroot.
        sysroot_flags="--sysroot=$sysroot"
        ;;
    esac
    local T U
    T="$(tr 'a-z-' 'A-Z_' <<<"$triple")"
    U="$(tr '-' '_' <<<"$triple")"

    say "building $triple (release)"
    local t0=$SECONDS
    env \
        RUSTC="$RUSTC_DEB" \
        CARGO_TARGET_DIR="$ROOT/target/cross" \
        "CARGO_TARGET_${T}_LINKER=$gnu-gcc" \
        "CARGO_TARGET_${T}_RUSTFLAGS=$sysroot_flags" \
        "CC_${U}=$gnu-gcc" \
        "CXX_${U}=$gnu-g++" \
        "AR_${U}=$gnu-ar" \
        "RANLIB_${U}=$gnu-ranlib" \
        "$CARGO" build --release --locked --target "$triple" \
        -p mqtt-kafka-gateway --bin mqtt-kafka-gateway
    local secs=$((SECONDS - t0))
    local bin="$ROOT/target/cross/$triple/release/mqtt-kafka-gateway"
    [[ -x $bin ]] || die "$bin was not produced"
    say "$triple: cargo build took ${secs}s"

    # --- runtime dependencies
    local needed bad
    needed="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p')"
    say "$triple: NEEDED: $(tr '\n' ' ' <<<"$needed")"
    bad="$(grep -Ev "$allowed_needed" <<<"$needed" || true)"
    [[ -z $bad ]] || die "$triple binary needs libraries beyond the C library: $bad"
    local interp
    interp="$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')"
    say "$triple: interpreter $interp"
    local glibc
    glibc="$("$gnu-objdump" -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -1)"
    say "$triple: newest C library symbol version needed: $glibc (Raspberry Pi OS 12 bookworm has glibc 2.36)"

    # --- size (the release profile strips; strip a copy anyway to report the figure)
    local tmp size
    tmp="$(mktemp)"
    "$gnu-strip" -o "$tmp" "$bin"
    size="$(stat -c %s "$tmp")"
    rm -f "$tmp"
    say "$triple: size $(stat -c %s "$bin") bytes as built, $size bytes stripped ($((size / 1024)) KiB)"

    # --- run under qemu-user
    local out
    out="$(timeout 120 "$qemu" "${qemu_args[@]}" "$bin" --version)" ||
        die "$triple: '$qemu $bin --version' failed"
    say "$triple: --version under $qemu: $out"
    timeout 120 "$qemu" "${qemu_args[@]}" "$bin" check-config --config "$ROOT/config/gateway.example.toml" >&2 ||
        die "$triple: check-config under $qemu failed"
    say "$triple: check-config under $qemu: ok"
}

for a in "${targets[@]}"; do
    build_one "$a"
done
say "done: ${targets[*]}"
