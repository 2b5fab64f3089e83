#!/usr/bin/env bash
# Installs what scripts/cross-build.sh and scripts/cross-smoke.sh need to build the
# gateway for 64-bit and 32-bit ARM on this Debian 12 x86-64 machine, without Docker
# (docs/CROSS.md explains the route):
#   - the arm64 and armhf dpkg architectures (multiarch);
#   - Debian's rustc-web (Rust 1.96) as /usr/bin/rustc, with the target standard
#     libraries libstd-rust-web-dev:arm64 and :armhf (same version as the host one);
#   - the C/C++ cross compilers for aarch64-linux-gnu and arm-linux-gnueabihf (the
#     vendored librdkafka, OpenSSL, curl, zlib and zstd builds need both C and C++);
#   - qemu-user (qemu-aarch64, qemu-arm) and the multiarch C libraries libc6:arm64 and
#     libc6:armhf, which give qemu the ELF interpreter under /lib without -L;
#   - binutils (readelf) and the host build tools (cmake, make, perl);
#   - debootstrap, qemu-user-static and binfmt-support for the Debian arm64/armhf roots
#     of scripts/debian-root.sh (installing binfmt-support registers qemu-user-static's
#     binfmt_misc entries system-wide: ARM ELF binaries then run through qemu).
# It leaves the rustup toolchain in ~/.cargo/bin alone: rustc-web only adds
# /usr/bin/rustc and /usr/bin/rustdoc, and every project script puts ~/.cargo/bin first
# on PATH, so plain `cargo`/`rustc` stay the rustup ones. Only cross-build.sh sets
# RUSTC=/usr/bin/rustc, and only for its own cargo run.
# Needs root (or sudo). Idempotent: when everything is in place it only checks.
set -euo pipefail

say() { echo "[install-cross-deps] $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && SUDO=(sudo) || SUDO=(__need_root__)
fi
as_root() {
    [[ ${SUDO[0]:-} == __need_root__ ]] && die "need root (or sudo) to run: $*"
    "${SUDO[@]}" "$@"
}

command -v dpkg >/dev/null && command -v apt-get >/dev/null ||
    die "this route needs a Debian (12, bookworm) host with dpkg and apt-get"
host_arch="$(dpkg --print-architecture)"
[[ $host_arch == amd64 ]] || die "this route is written for an amd64 host, this one is $host_arch"

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

want_arm64=0
want_armhf=0
case "${1:-all}" in
aarch64) want_arm64=1 ;;
armv7) want_armhf=1 ;;
all) want_arm64=1 want_armhf=1 ;;
*) die "usage: $0 [aarch64|armv7|all]" ;;
esac
CACHE_ROOT="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"

# ------------------------------------------------------------- architectures
# Only arm64 is added to dpkg. armhf is NOT: on this workplace's Debian mirror the
# bookworm-security armhf index does not match its signed Release file, and apt then
# rolls back the whole bookworm-security update (apt-get update exits 100 for every
# later caller, and even the arm64 index is dropped). The armv7 route below needs no
# armhf dpkg packages.
added_arch=0
if [[ $want_arm64 -eq 1 ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    as_root dpkg --add-architecture arm64
    added_arch=1
fi

# ------------------------------------------------------------------ packages
# The Rust packages must all be the same version (libstd-rust-web-dev is Multi-Arch:
# same), so they are installed together in one apt run.
pkgs=(rustc-web binutils cmake make perl g++ curl xz-utils)
# Debian 12 roots of the ARM architectures (scripts/debian-root.sh: the armv7 smoke
# test's C library, the ARM package tests): debootstrap, and qemu-user-static whose
# binfmt_misc entries (enabled by binfmt-support's update-binfmts) carry the F flag.
pkgs+=(debootstrap qemu-user-static binfmt-support)
[[ $want_arm64 -eq 1 ]] && pkgs+=(
    libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
    qemu-user libc6:arm64 libgcc-s1:arm64
)
[[ $want_armhf -eq 1 ]] && pkgs+=(gcc-arm-linux-gnueabihf g++-arm-linux-gnueabihf qemu-user)
missing=()
for p in "${pkgs[@]}"; do
    pkg_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        [[ $added_arch -eq 0 ]] ||
        die "apt-get update failed after adding the arm64 architecture (see its errors above)"
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
else
    say "cross packages: already installed"
fi

# ------------------------------------------ armv7 standard library (no dpkg)
# Debian's libstd-rust-web-dev:armhf, of exactly the installed rustc-web version,
# unpacked (dpkg-deb -x, not installed) into a private sysroot that cross-build.sh
# passes to rustc with --sysroot for the armv7 target only. The .deb comes from the
# same Debian security archive apt uses; its SHA-256 is checked against the archive's
# armhf index, and that index against the signed Release file apt verified.
rustc_ver="$(dpkg-query -W -f='${Version}' rustc-web)"
ARMV7_SYSROOT="$CACHE_ROOT/rust-sysroot-armv7-$rustc_ver"
if [[ $want_armhf -eq 1 ]]; then
    t=armv7-unknown-linux-gnueabihf
    if compgen -G "$ARMV7_SYSROOT/lib/rustlib/$t/lib/libstd-*.rlib" >/dev/null &&
        [[ -f $ARMV7_SYSROOT/.complete ]]; then
        say "armv7 Rust std $rustc_ver: already in $ARMV7_SYSROOT"
    else
        say "fetching libstd-rust-web-dev:armhf $rustc_ver into $ARMV7_SYSROOT"
        mirror="http://deb.debian.org/debian-security"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        curl -fsS -o "$work/Packages.xz" "$mirror/dists/bookworm-security/main/binary-armhf/Packages.xz" ||
            die "could not fetch the armhf index from $mirror"
        inrelease="$(ls /var/lib/apt/lists/*debian-security_dists_bookworm-security_InRelease 2>/dev/null | head -1)"
        got="$(sha256sum "$work/Packages.xz" | cut -d' ' -f1)"
        if [[ -n $inrelease ]] && grep -q "^ $got .* main/binary-armhf/Packages.xz$" "$inrelease"; then
            say "armhf index matches the signed Release file"
        else
            say "WARNING: the mirror's armhf index does not match its signed Release file (mirror out of sync); the .deb is checked against that index only"
        fi
        xz -dc "$work/Packages.xz" >"$work/Packages"
        entry="$(awk -v v="$rustc_ver" 'BEGIN{RS=""} /(^|\n)Package: libstd-rust-web-dev\n/ && index($0, "\nVersion: " v "\n") {print; exit}' "$work/Packages")"
        [[ -n $entry ]] || die "libstd-rust-web-dev $rustc_ver (armhf) is not in the mirror's armhf index"
        file="$(sed -n 's/^Filename: //p' <<<"$entry")"
        sum="$(sed -n 's/^SHA256: //p' <<<"$entry")"
        curl -fsS -o "$work/std.deb" "$mirror/$file" || die "could not fetch $mirror/$file"
        echo "$sum  $work/std.deb" | sha256sum -c --quiet - || die "SHA-256 mismatch for $file"
        dpkg-deb -x "$work/std.deb" "$work/root"
        [[ -d $work/root/usr/lib/rustlib/$t/lib ]] || die "$file has no usr/lib/rustlib/$t/lib"
        rm -rf "$ARMV7_SYSROOT"
        mkdir -p "$ARMV7_SYSROOT/lib/rustlib"
        mv "$work/root/usr/lib/rustlib/$t" "$ARMV7_SYSROOT/lib/rustlib/$t"
        # The rest of the sysroot (host std for build scripts, etc.) is Debian's.
        for d in /usr/lib/rustlib/*; do
            [[ -e $ARMV7_SYSROOT/lib/rustlib/$(basename "$d") ]] || ln -s "$d" "$ARMV7_SYSROOT/lib/rustlib/"
        done
        touch "$ARMV7_SYSROOT/.complete"
        rm -rf "$work"
        trap - EXIT
    fi
fi

# ---------------------------------------------------------------- checks
[[ -x /usr/bin/rustc ]] || die "/usr/bin/rustc missing after installing rustc-web"
rv="$(/usr/bin/rustc --version)"
need_cmds=(readelf cmake)
if [[ $want_arm64 -eq 1 ]]; then
    compgen -G "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib/libstd-*.rlib" >/dev/null ||
        die "no Rust standard library for aarch64 under /usr/lib/rustlib (libstd-rust-web-dev:arm64)"
    [[ -e /lib/ld-linux-aarch64.so.1 ]] || die "/lib/ld-linux-aarch64.so.1 missing (libc6:arm64)"
    need_cmds+=(aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64)
fi
if [[ $want_armhf -eq 1 ]]; then
    [[ -e /usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3 ]] ||
        die "/usr/arm-linux-gnueabihf/lib/ld-linux-armhf.so.3 missing (libc6-armhf-cross)"
    need_cmds+=(arm-linux-gnueabihf-gcc arm-linux-gnueabihf-g++ qemu-arm)
fi
need_cmds+=(debootstrap update-binfmts)
[[ $want_arm64 -eq 1 ]] && need_cmds+=(qemu-aarch64-static)
[[ $want_armhf -eq 1 ]] && need_cmds+=(qemu-arm-static)
for c in "${need_cmds[@]}"; do
    command -v "$c" >/dev/null || die "$c not found after install"
done
# rustup's toolchain must still come first for the rest of the project.
if [[ -x $HOME/.cargo/bin/rustc ]]; then
    first="$(PATH="$HOME/.cargo/bin:$PATH" command -v rustc)"
    [[ $first == "$HOME/.cargo/bin/rustc" ]] || die "rustc on PATH is $first, expected the rustup one"
fi
say "done: $rv at /usr/bin/rustc (targets: ${1:-all})"
[[ $want_armhf -eq 1 ]] && say "armv7 sysroot: $ARMV7_SYSROOT"
exit 0
