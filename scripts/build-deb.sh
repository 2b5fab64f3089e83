#!/usr/bin/env bash
# Build the Debian package of mqtt-kafka-gateway with dpkg-deb (no cargo-deb needed).
#
#   scripts/build-deb.sh --arch amd64|arm64|armhf [--revision N] [--binary PATH]
#
# Output: target/debian/mqtt-kafka-gateway_<version>-<revision>_<arch>.deb containing
#   /usr/bin/mqtt-kafka-gateway                       the release binary (stripped)
#   /lib/systemd/system/mqtt-kafka-gateway.service    systemd/mqtt-kafka-gateway.service
#   /etc/mqtt-kafka-gateway/gateway.toml              conffile: config/gateway.example.toml
#                                                     with wal.dir = /var/lib/mqtt-kafka-gateway
#   /usr/share/doc/mqtt-kafka-gateway/                README, DEPLOY, RELIABILITY, copyright
#   maintainer scripts from packaging/debian/         (user, state dir, systemd; purge
#                                                     is the only thing that deletes the WAL)
#
# Binaries: amd64 is built here (cargo build --release). arm64 and armhf come from
# scripts/cross-build.sh aarch64|armv7, at
#   target/cross/aarch64-unknown-linux-gnu/release/mqtt-kafka-gateway
#   target/cross/armv7-unknown-linux-gnueabihf/release/mqtt-kafka-gateway
# --binary PATH packages another binary (its ELF machine must match --arch).
#
# Depends: computed by dpkg-shlibdeps when it can resolve the libraries for that
# architecture, else from the binary's NEEDED entries and symbol versions (readelf).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
NAME=mqtt-kafka-gateway

say() { echo "[build-deb] $*" >&2; }
die() { echo "[build-deb] ERROR: $*" >&2; exit 1; }

usage() {
    echo "usage: $0 --arch amd64|arm64|armhf [--revision N] [--binary PATH]" >&2
    exit 2
}

ARCH=""
REVISION=1
BINARY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --arch) ARCH="${2:-}"; shift 2 ;;
    --revision) REVISION="${2:-}"; shift 2 ;;
    --binary) BINARY="${2:-}"; shift 2 ;;
    -h | --help) usage ;;
    *) usage ;;
    esac
done
[[ "$REVISION" =~ ^[0-9][0-9a-z.+~]*$ ]] || die "bad --revision '$REVISION'"

for tool in dpkg-deb readelf objdump gzip; do
    command -v "$tool" >/dev/null ||
        die "$tool not found (Debian: apt-get install dpkg binutils gzip)"
done

case "$ARCH" in
amd64) TRIPLE=x86_64-unknown-linux-gnu; MACHINE="Advanced Micro Devices X86-64"; CROSS="" ;;
arm64) TRIPLE=aarch64-unknown-linux-gnu; MACHINE="AArch64"; CROSS=aarch64 ;;
armhf) TRIPLE=armv7-unknown-linux-gnueabihf; MACHINE="ARM"; CROSS=armv7 ;;
*) usage ;;
esac

if [[ -z "$BINARY" ]]; then
    if [[ "$ARCH" == amd64 ]]; then
        [[ "$(uname -m)" == x86_64 ]] || die "--arch amd64 builds natively: run it on x86-64, or pass --binary"
        say "building the release binary (cargo build --release)"
        (cd "$ROOT" && cargo build --release --locked -p "$NAME" --bin "$NAME" >&2)
        BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/$NAME"
    else
        BINARY="$ROOT/target/cross/$TRIPLE/release/$NAME"
        [[ -x "$BINARY" ]] ||
            die "no $ARCH binary at $BINARY: build it first with scripts/cross-build.sh $CROSS (see docs/CROSS.md)"
    fi
fi
[[ -x "$BINARY" ]] || die "binary not found or not executable: $BINARY"

# The ELF must be for the package's architecture (and hard-float for armhf).
header="$(readelf -h "$BINARY")"
grep -q "Machine:[[:space:]]*$MACHINE\$" <<<"$header" ||
    die "$BINARY is not a $ARCH binary: $(grep Machine: <<<"$header" | xargs)"
if [[ "$ARCH" == armhf ]]; then
    grep -q "hard-float ABI" <<<"$header" || die "$BINARY is not hard-float (armhf)"
fi

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
[[ -n "$VERSION" ]] || die "cannot read the version from Cargo.toml [workspace.package]"
DEB_VERSION="$VERSION-$REVISION"

OUT_DIR="$ROOT/target/debian"
mkdir -p "$OUT_DIR"
STAGE="$(mktemp -d "$OUT_DIR/stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
PKG="$STAGE/pkg"
DOC="$PKG/usr/share/doc/$NAME"

install -d -m 0755 "$PKG/DEBIAN" "$PKG/usr/bin" "$PKG/lib/systemd/system" \
    "$PKG/etc/$NAME" "$DOC/examples"
install -m 0755 "$BINARY" "$PKG/usr/bin/$NAME"
install -m 0644 "$ROOT/systemd/$NAME.service" "$PKG/lib/systemd/system/$NAME.service"

# The packaged config: the commented example, with the WAL in the unit's
# StateDirectory and the gateway id defaulting to the host name. Each edit must hit
# exactly one line, so a changed example fails here instead of shipping silently.
edit_one() { # FILE PATTERN REPLACEMENT
    local n
    n="$(grep -c -- "$2" "$1" || true)"
    [[ "$n" == 1 ]] || die "config/gateway.example.toml: expected one line matching '$2', found $n"
    sed -i "s|$2|$3|" "$1"
}
CONF="$PKG/etc/$NAME/gateway.toml"
{
    echo "# /etc/$NAME/gateway.toml, installed by the $NAME Debian package."
    echo "# A conffile: your edits are kept on upgrade. After editing:"
    echo "#   $NAME check-config --config /etc/$NAME/gateway.toml"
    echo "#   systemctl restart $NAME"
    echo "# Passwords: prefer mqtt.password_file; this file is root:$NAME 0640."
    echo "#"
    cat "$ROOT/config/gateway.example.toml"
} >"$CONF"
edit_one "$CONF" '^gateway_id = ' '# gateway_id = '
edit_one "$CONF" '^dir = "./data"$' 'dir = "/var/lib/mqtt-kafka-gateway"   # the unit'"'"'s StateDirectory=; keep it there'
chmod 0640 "$CONF"
echo "/etc/$NAME/gateway.toml" >"$PKG/DEBIAN/conffiles"

for f in postinst prerm postrm; do
    install -m 0755 "$ROOT/packaging/debian/$f" "$PKG/DEBIAN/$f"
done

install -m 0644 "$ROOT/README.md" "$DOC/README.md"
for f in DEPLOY.md RELIABILITY.md; do
    if [[ -f "$ROOT/docs/$f" ]]; then install -m 0644 "$ROOT/docs/$f" "$DOC/$f"; fi
done
install -m 0644 "$ROOT/packaging/debian/copyright" "$DOC/copyright"
install -m 0644 "$ROOT/config/gateway.example.toml" "$DOC/examples/gateway.example.toml"
# Reproducible: the changelog date is the last commit's, not now.
DATE="$(cd "$ROOT" && git log -1 --format=%cD 2>/dev/null || date -R)"
printf '%s (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- mqtt-kafka-gateway maintainers <maintainers@example.invalid>  %s\n' \
    "$NAME" "$DEB_VERSION" "$VERSION" "$DATE" | gzip -9n >"$DOC/changelog.Debian.gz"
chmod 0644 "$DOC/changelog.Debian.gz"

# --- Depends
shlibs_from_dpkg() {
    command -v dpkg-shlibdeps >/dev/null || return 1
    local d="$STAGE/shlibs"
    mkdir -p "$d/debian"
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$NAME" "$NAME" >"$d/debian/control"
    (cd "$d" && DEB_HOST_ARCH="$ARCH" dpkg-shlibdeps -O "$PKG/usr/bin/$NAME" 2>/dev/null) |
        sed -n 's/^shlibs:Depends=//p' | grep .
}
shlibs_from_readelf() {
    local needed deps=() lib glibc gcc
    needed="$(readelf -d "$PKG/usr/bin/$NAME" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    glibc="$(objdump -T "$PKG/usr/bin/$NAME" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)"
    gcc="$(objdump -T "$PKG/usr/bin/$NAME" | grep -o 'GCC_[0-9.]*' | sed 's/GCC_//' | sort -Vu | tail -1)"
    local libc=0 libgcc=0
    for lib in $needed; do
        case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*) libc=1 ;;
        libgcc_s.so.1) libgcc=1 ;;
        *) die "unexpected shared library dependency $lib (the binary should need only the C library)" ;;
        esac
    done
    [[ $libc == 1 ]] && deps+=("libc6 (>= ${glibc:?no GLIBC symbol versions found})")
    # dpkg's symbols file for libgcc-s1 maps GCC_x.y[.z] to (>= x.y).
    [[ $libgcc == 1 ]] && deps+=("libgcc-s1 (>= $(cut -d. -f1,2 <<<"${gcc:-3.0}"))")
    local joined
    joined="$(IFS=,; echo "${deps[*]}")"
    echo "${joined//,/, }"
}
if SHLIBS="$(shlibs_from_dpkg)"; then
    say "Depends from dpkg-shlibdeps: $SHLIBS"
else
    SHLIBS="$(shlibs_from_readelf)"
    say "Depends from readelf (dpkg-shlibdeps cannot resolve $ARCH libraries here): $SHLIBS"
fi
DEPENDS="$SHLIBS, adduser"

INSTALLED_SIZE="$(du -sk --exclude=DEBIAN "$PKG" | cut -f1)"
cat >"$PKG/DEBIAN/control" <<EOF
Package: $NAME
Version: $DEB_VERSION
Architecture: $ARCH
Maintainer: mqtt-kafka-gateway maintainers <maintainers@example.invalid>
Installed-Size: $INSTALLED_SIZE
Depends: $DEPENDS
Section: net
Priority: optional
Homepage: https://example.invalid/mqtt-kafka-gateway
Description: MQTT to Kafka gateway with a durable write-ahead log
 Subscribes to an MQTT broker such as Mosquitto, writes every message to a
 write-ahead log on local disk before acknowledging it, and forwards the log
 to Apache Kafka at least once (acks=all, idempotent producer). Nothing is
 deleted before Kafka acknowledged it, so broker outages, crashes and power
 cuts lose nothing.
 .
 Built for edge gateways such as the Raspberry Pi: a hardened systemd unit
 with a watchdog, and an admin HTTP API that shows the backlog.
EOF
(cd "$PKG" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$PKG/DEBIAN/md5sums"
chmod 0644 "$PKG/DEBIAN/control" "$PKG/DEBIAN/conffiles" "$PKG/DEBIAN/md5sums"

DEB="$OUT_DIR/${NAME}_${DEB_VERSION}_${ARCH}.deb"
SOURCE_DATE_EPOCH="$(cd "$ROOT" && git log -1 --format=%ct 2>/dev/null || date +%s)" \
    dpkg-deb --root-owner-group -Zxz --build "$PKG" "$DEB" >&2
say "built $DEB ($(du -h "$DEB" | cut -f1); binary $(stat -c %s "$PKG/usr/bin/$NAME") bytes)"
echo "$DEB"
