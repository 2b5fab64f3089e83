#!/usr/bin/env bash
# Debian 12 (bookworm) root file systems for arm64 and armhf, made with debootstrap and
# run through qemu-user-static via binfmt_misc (docs/CROSS.md). Used by
# scripts/cross-smoke.sh (the armv7 gateway runs under `qemu-arm -L <armhf root>`, on
# Debian's own armhf C library) and scripts/test-deb-arm.sh (the ARM packages are
# installed in these roots).
#
#   scripts/debian-root.sh tarball ARCH      prints the cached root tarball's path,
#                                            making it first if needed
#   scripts/debian-root.sh unpack ARCH DIR   unpacks that tarball into DIR (new or empty)
#   scripts/debian-root.sh binfmt ARCH       makes sure the kernel runs ARCH binaries
#                                            with qemu-*-static, fix-binary (F) flag
#   ARCH: arm64 | armhf
#
# The root: `debootstrap --variant=minbase --include=adduser bookworm` from
# deb.debian.org (minbase has apt, dpkg, libc6, libgcc-s1, util-linux with setpriv,
# init-system-helpers with deb-systemd-helper; adduser is what the package's maintainer
# scripts need beyond that). debootstrap runs the target's programs (its second stage)
# through binfmt_misc, so `binfmt` is done first. The finished root, apt's downloaded
# .debs removed, is cached as
#   ~/.cache/mqtt-kafka-gateway/debian-roots/bookworm-minbase-ARCH-<key>.tar.gz
# (<key> hashes suite, variant, packages and mirror). A tarball older than
# MKG_DEBIAN_ROOT_MAX_AGE_DAYS (default 30) is made again, to pick up Debian's updates;
# if that fails (no network) the old one is used with a warning. Making one takes
# ~3-5 min (most of it dpkg under qemu), unpacking ~5 s.
#
# binfmt: mounts binfmt_misc on /proc/sys/fs/binfmt_misc if it is not mounted, then
# enables Debian's qemu-user-static entries (update-binfmts from binfmt-support; they
# carry the F flag: the kernel opens the interpreter when the entry is registered, so it
# works inside a chroot that has no qemu). An entry that exists without the F flag
# (e.g. from qemu-user-binfmt) is an error: chroots would fail with "No such file".
#
# Needs root. Packages (debootstrap, qemu-user-static, binfmt-support): installed by
# scripts/install-cross-deps.sh.
#
# Environment: MKG_CACHE_DIR (cache root), MKG_DEBIAN_MIRROR (default
# http://deb.debian.org/debian), MKG_DEBIAN_ROOT_MAX_AGE_DAYS (default 30).
set -euo pipefail

say() { echo "[debian-root] $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

SUITE=bookworm
VARIANT=minbase
INCLUDE=adduser
MIRROR="${MKG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MAX_AGE_DAYS="${MKG_DEBIAN_ROOT_MAX_AGE_DAYS:-30}"
CACHE_ROOT="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"
ROOTS="$CACHE_ROOT/debian-roots"

usage() {
    cat >&2 <<EOF
usage: $0 tarball ARCH
       $0 unpack ARCH DIR
       $0 binfmt ARCH
ARCH: arm64 | armhf
EOF
    exit 2
}

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, binfmt_misc)"
[[ $MAX_AGE_DAYS =~ ^[0-9]+$ ]] || die "MKG_DEBIAN_ROOT_MAX_AGE_DAYS must be a number"

qemu_name() { # ARCH -> the binfmt entry / qemu name
    case "$1" in
    arm64) echo qemu-aarch64 ;;
    armhf) echo qemu-arm ;;
    *) usage ;;
    esac
}

uname_m() { # ARCH -> what `uname -m` says inside the root
    case "$1" in
    arm64) echo aarch64 ;;
    armhf) echo armv7l ;;
    esac
}

# Unmounts everything below DIR (deepest first), then deletes DIR without crossing
# into any file system that is still mounted there.
remove_tree() {
    local dir="$1" m
    [[ -d $dir ]] || return 0
    dir="$(cd "$dir" && pwd -P)"
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r)
    if findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | grep -q .; then
        die "still mounted below $dir, not deleting it"
    fi
    rm -rf --one-file-system "$dir"
}

cmd_binfmt() {
    [[ $# -eq 1 ]] || usage
    local arch="$1" name entry
    name="$(qemu_name "$arch")"
    entry="/proc/sys/fs/binfmt_misc/$name"
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        say "mounting binfmt_misc on /proc/sys/fs/binfmt_misc"
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc (a container without that permission cannot run foreign chroots)"
    fi
    if [[ ! -e $entry ]] || ! grep -qx enabled "$entry"; then
        command -v update-binfmts >/dev/null || die "update-binfmts missing: run scripts/install-cross-deps.sh"
        [[ -f /usr/share/binfmts/$name ]] ||
            die "/usr/share/binfmts/$name missing (qemu-user-static): run scripts/install-cross-deps.sh"
        say "registering $name with binfmt_misc (update-binfmts --enable $name)"
        update-binfmts --enable "$name" >&2 ||
            die "update-binfmts --enable $name failed"
    fi
    grep -qsx enabled "$entry" || die "binfmt_misc entry $entry is not enabled"
    grep -q '^flags:.*F' "$entry" ||
        die "$entry has no F (fix-binary) flag, so it cannot work in a chroot: $(grep '^interpreter\|^flags' "$entry" | tr '\n' ' ')(remove qemu-user-binfmt, install qemu-user-static)"
    say "binfmt: $name $(sed -n 's/^interpreter //p' "$entry") ($(sed -n 's/^flags: //p' "$entry"))"
}

cache_key() { # ARCH
    printf '%s\n' "$SUITE" "$VARIANT" "$INCLUDE" "$MIRROR" "$1" | sha256sum | cut -c1-12
}

make_tarball() { # ARCH OUT
    local arch="$1" out="$2" build t0=$SECONDS
    mkdir -p "$ROOTS"
    build="$(mktemp -d "$ROOTS/build-$arch.XXXXXX")"
    # shellcheck disable=SC2064 # expand now: the path is local to this function
    trap "remove_tree '$build'" EXIT
    say "debootstrap --arch=$arch --variant=$VARIANT --include=$INCLUDE $SUITE (~3-5 min, second stage under qemu)"
    if ! debootstrap --arch="$arch" --variant="$VARIANT" --include="$INCLUDE" \
        "$SUITE" "$build/root" "$MIRROR" >"$build/debootstrap.log" 2>&1; then
        tail -n 30 "$build/debootstrap.log" >&2
        [[ -f $build/root/debootstrap/debootstrap.log ]] && tail -n 30 "$build/root/debootstrap/debootstrap.log" >&2
        die "debootstrap failed"
    fi
    local m
    m="$(chroot "$build/root" uname -m)"
    [[ $m == "$(uname_m "$arch")" ]] || die "uname -m in the new root says '$m', expected $(uname_m "$arch")"
    chroot "$build/root" apt-get clean
    tar -C "$build/root" --numeric-owner --one-file-system -czf "$build/root.tar.gz" .
    mv "$build/root.tar.gz" "$out"
    remove_tree "$build"
    trap - EXIT
    say "made $out ($(du -h "$out" | cut -f1), $((SECONDS - t0)) s)"
}

cmd_tarball() {
    [[ $# -eq 1 ]] || usage
    local arch="$1" out
    qemu_name "$arch" >/dev/null
    command -v debootstrap >/dev/null || die "debootstrap missing: run scripts/install-cross-deps.sh"
    out="$ROOTS/$SUITE-$VARIANT-$arch-$(cache_key "$arch").tar.gz"
    if [[ -f $out ]] && [[ -z $(find "$out" -mtime "+$MAX_AGE_DAYS") ]]; then
        say "cached: $out"
    else
        cmd_binfmt "$arch"
        if [[ -f $out ]]; then
            say "$out is older than $MAX_AGE_DAYS days: making it again"
            # A separate process, so that set -e holds inside (it does not in a
            # command tested by if or ||).
            if bash "$0" _make "$arch" "$out.new"; then
                mv "$out.new" "$out"
            else
                rm -f "$out.new"
                say "WARNING: could not make a new $arch root; using the old one"
            fi
        else
            bash "$0" _make "$arch" "$out" || die "could not make the $arch root"
        fi
    fi
    echo "$out"
}

cmd_unpack() {
    [[ $# -eq 2 ]] || usage
    local arch="$1" dir="$2" tarball
    tarball="$(cmd_tarball "$arch")"
    mkdir -p "$dir"
    [[ -z $(ls -A "$dir") ]] || die "$dir is not empty"
    tar -C "$dir" --numeric-owner -xpzf "$tarball"
    say "unpacked the $arch root into $dir"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
tarball) cmd_tarball "$@" ;;
unpack) cmd_unpack "$@" ;;
binfmt) cmd_binfmt "$@" ;;
_make) make_tarball "$@" ;;
*) usage ;;
esac
