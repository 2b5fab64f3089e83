#!/usr/bin/env bash
# End-to-end test of the ARM Debian packages (arm64, armhf) in real Debian 12 roots on
# this x86-64 machine, as root (docs/CROSS.md, docs/DEPLOY.md; a step of
# `cargo xtask ci`):
#
#   scripts/test-deb-arm.sh [arm64|armhf|all]        (default: all)
#
# For each architecture:
#  1. builds the ARM binary (scripts/cross-build.sh aarch64|armv7) and the package
#     (scripts/build-deb.sh --arch arm64|armhf); checks its Architecture and Depends;
#  2. unpacks a debootstrap'd Debian 12 minbase root of that architecture
#     (scripts/debian-root.sh, cached as a tarball in ~/.cache/mqtt-kafka-gateway),
#     mounts /proc, binds /dev and /sys into it; every program in it runs under
#     qemu-user-static through binfmt_misc (`uname -m` is checked);
#  3. `apt-get install /tmp/<pkg>.deb` in the root: the package's Depends must be
#     satisfied by Debian's own packages. Checks the files (the binary is the cross
#     binary, the unit is systemd/mqtt-kafka-gateway.service), the conffile and its
#     permissions, the system user (uid < 1000, nologin), the state directory, the
#     enable symlink (systemd itself does not run in a chroot), and that `check-config`
#     accepts the shipped /etc/mqtt-kafka-gateway/gateway.toml;
#  4. edits the installed config to point at a Mosquitto and a Kafka running on the
#     host on free loopback ports (scripts/mosquitto-local.sh, kafka-local.sh; the root
#     shares the host's network) and runs the PACKAGED binary inside the root as the
#     package's user (setpriv, from the root's util-linux): N messages published with
#     mosquitto_pub, all N read back from Kafka with kcat, the WAL backlog drains to 0,
#     SIGTERM gives exit 0;
#  5. `apt-get purge`: the package, the WAL, the config and the enable symlink are gone.
# The roots, mounts, brokers and gateway are removed on exit, also on failure (logs
# are kept then, and their path printed).
#
# Environment: MKG_CROSS_SKIP_DEPS=1 skips the apt installs (scripts/install-deps.sh,
# scripts/install-cross-deps.sh); MKG_CACHE_DIR as elsewhere.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
NAME=mqtt-kafka-gateway
STATE=/var/lib/$NAME
CONF_DIR=/etc/$NAME
CONF=$CONF_DIR/gateway.toml
UNIT=/lib/systemd/system/$NAME.service
WANTS=/etc/systemd/system/multi-user.target.wants/$NAME.service
N=500

say() { echo "[test-deb-arm] $*" >&2; }
die() {
    echo "[test-deb-arm] FAIL: $*" >&2
    exit 1
}

which="${1:-all}"
case "$which" in
arm64 | armhf) archs=("$which") ;;
all) archs=(arm64 armhf) ;;
*) die "usage: $0 [arm64|armhf|all]" ;;
esac
[[ $(id -u) == 0 ]] || die "run as root (debootstrap roots, chroot, mounts, binfmt_misc)"

if [[ ${MKG_CROSS_SKIP_DEPS:-0} != 1 ]]; then
    bash scripts/install-deps.sh >/dev/null
    cross_which=all
    [[ $which == arm64 ]] && cross_which=aarch64
    [[ $which == armhf ]] && cross_which=armv7
    bash scripts/install-cross-deps.sh "$cross_which"
fi
for tool in dpkg-deb chroot findmnt setpriv curl kcat mosquitto_pub java; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: run scripts/install-deps.sh and scripts/install-cross-deps.sh"
done

WORK="$(cd "$(mktemp -d /tmp/mkg-test-deb-arm.XXXXXX)" && pwd -P)"
chmod 0755 "$WORK"
GW_PID=""
R="" # the current root
OK=0

# Unmounts everything below DIR, deepest first, then deletes DIR without crossing into
# a file system that is still mounted there (never into the host's /dev, /proc, /sys).
remove_root() {
    local dir="$1" m
    [[ -n $dir && -d $dir ]] || return 0
    while read -r m; do
        [[ -n $m ]] || continue
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done < <(findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | sort -r)
    if findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1' | grep -q .; then
        echo "[test-deb-arm] still mounted below $dir, NOT deleting it" >&2
        return 1
    fi
    rm -rf --one-file-system "$dir"
}

# The EXIT trap can run while a command's output is redirected to a log (a signal
# arriving during apt-get): fd 9 keeps the script's own stderr for its messages.
exec 9>&2
cleanup() {
    set +e
    exec 2>&9
    if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -KILL "$GW_PID"
        wait "$GW_PID" 2>/dev/null
    fi
    bash "$ROOT/scripts/mosquitto-local.sh" stop "$WORK/mosq" >/dev/null 2>&1
    bash "$ROOT/scripts/kafka-local.sh" stop "$WORK/kafka" >/dev/null 2>&1
    local r
    for r in "$WORK"/root-*; do
        [[ -d $r ]] && remove_root "$r"
    done
    if [[ $OK == 1 ]]; then
        rm -rf "$WORK"
    else
        for f in "$WORK"/*.log; do
            [[ -f $f ]] && {
                echo "----- $f (tail)" >&2
                tail -40 "$f" >&2
            }
        done
        echo "[test-deb-arm] logs kept in $WORK" >&2
    fi
}
trap cleanup EXIT
# Killed or interrupted: exit, so that the EXIT trap unmounts and cleans up.
trap 'exit 143' TERM
trap 'exit 130' INT

# shellcheck source=scripts/test-helpers.sh
source "$ROOT/scripts/test-helpers.sh"

in_root() { chroot "$R" "$@"; }
gw_alive_and() { # COMMAND...: fails the test at once if the gateway has exited
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited (log: $WORK/gateway-$arch.log)"
    "$@"
}
backlog_is() { # N
    [[ $(curl -fsS "http://127.0.0.1:$APORT/backlog" | grep -o '"records":[0-9]*' | head -1) == "\"records\":$1" ]]
}
kafka_has_all() { # TOPIC EXPECTED_FILE
    timeout 30 kcat -b "127.0.0.1:$KPORT" -C -t "$1" -o beginning -e -q -f '%s\n' 2>/dev/null |
        sort -u >"$WORK/consumed.txt" || true
    [[ -z "$(comm -23 <(sort -u "$2") "$WORK/consumed.txt")" ]]
}

# --- brokers (shared by the architectures)
MPORT="$(free_port)"
KPORT="$(free_port)"
CPORT="$(free_port)"
mkdir -p "$WORK/mosq" "$WORK/kafka"
bash scripts/mosquitto-local.sh start "$WORK/mosq" "$MPORT" >&2
bash scripts/kafka-local.sh start "$WORK/kafka" "$KPORT" "$CPORT" >&2
HOST="$(cat /proc/sys/kernel/hostname)"

test_arch() {
    local arch="$1" cross triple qemu_m t0=$SECONDS
    case "$arch" in
    arm64) cross=aarch64 triple=aarch64-unknown-linux-gnu qemu_m=aarch64 ;;
    armhf) cross=armv7 triple=armv7-unknown-linux-gnueabihf qemu_m=armv7l ;;
    esac
    local bin="$ROOT/target/cross/$triple/release/$NAME"

    # --- 1. binary and package
    MKG_CROSS_SKIP_DEPS=1 bash scripts/cross-build.sh "$cross"
    local deb
    deb="$(bash scripts/build-deb.sh --arch "$arch")"
    check "$arch: package metadata (Architecture $arch, Depends on libc6 and adduser)" bash -c "
        [[ \$(dpkg-deb -f '$deb' Architecture) == $arch ]] &&
        dpkg-deb -f '$deb' Depends | grep -q 'libc6 (>= ' && dpkg-deb -f '$deb' Depends | grep -q adduser"
    say "$arch: Depends: $(dpkg-deb -f "$deb" Depends)"

    # --- 2. the root
    R="$WORK/root-$arch"
    bash scripts/debian-root.sh binfmt "$arch"
    bash scripts/debian-root.sh unpack "$arch" "$R"
    mount -t proc proc "$R/proc"
    mount --bind /dev "$R/dev"
    mount --bind /sys "$R/sys"
    check "$arch: programs in the root run as $qemu_m (qemu-user via binfmt_misc)" \
        bash -c "[[ \$(chroot '$R' uname -m) == $qemu_m ]]"
    # shellcheck disable=SC2016 # expanded in the root
    say "$arch: root is $(in_root sh -c '. /etc/os-release && echo "$PRETTY_NAME"'), libc6 $(in_root dpkg-query -W -f='${Version}' libc6)"

    # --- 3. install
    cp "$deb" "$R/tmp/"
    say "$arch: apt-get install /tmp/$(basename "$deb") (in the root)"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "/tmp/$(basename "$deb")" </dev/null >"$WORK/apt-install-$arch.log" 2>&1 ||
        {
            cat "$WORK/apt-install-$arch.log" >&2
            die "$arch: apt-get install of the package failed"
        }
    check "$arch: installed" bash -c "[[ \$(chroot '$R' dpkg-query -W -f='\${db:Status-Abbrev}' $NAME | tr -d ' ') == ii ]]"
    check "$arch: installed binary is the cross binary" cmp -s "$R/usr/bin/$NAME" "$bin"
    check "$arch: unit file installed" cmp -s "$R$UNIT" "$ROOT/systemd/$NAME.service"
    check "$arch: docs installed" test -f "$R/usr/share/doc/$NAME/copyright" -a -f "$R/usr/share/doc/$NAME/README.md"
    check "$arch: config is a conffile" bash -c "chroot '$R' dpkg-query -W -f='\${Conffiles}' $NAME | grep -q ' $CONF '"
    local uid gid
    uid="$(in_root getent passwd "$NAME" | cut -d: -f3)" || die "$arch: no system user $NAME in the root"
    gid="$(in_root getent group "$NAME" | cut -d: -f3)" || die "$arch: no group $NAME in the root"
    check "$arch: system user $NAME (uid $uid < 1000, nologin, home $STATE)" bash -c "
        IFS=: read -r _ _ uid _ _ home shell < <(chroot '$R' getent passwd $NAME)
        (( uid < 1000 )) && [[ \$home == $STATE && \$shell == /usr/sbin/nologin ]]"
    check "$arch: config root:$NAME 0640" bash -c "[[ \$(stat -c '%u:%g %a' '$R$CONF') == '0:$gid 640' ]]"
    check "$arch: config dir root:$NAME 0750" bash -c "[[ \$(stat -c '%u:%g %a' '$R$CONF_DIR') == '0:$gid 750' ]]"
    check "$arch: state dir $NAME:$NAME 0700" bash -c "[[ \$(stat -c '%u:%g %a' '$R$STATE') == '$uid:$gid 700' ]]"
    check "$arch: enabled (multi-user.target.wants symlink)" bash -c "[[ \$(readlink '$R$WANTS') == $UNIT ]]"
    check "$arch: packaged config is valid and puts the WAL in $STATE (check-config in the root)" bash -c "
        out=\$(chroot '$R' /usr/bin/$NAME check-config --config $CONF) && grep -q 'WAL in $STATE' <<<\"\$out\""

    # --- 4. configure, run the packaged binary as its user inside the root
    APORT="$(free_port)"
    edit() { # PATTERN REPLACEMENT (exactly one line must match)
        [[ "$(grep -c -- "$1" "$R$CONF")" == 1 ]] || die "$arch: packaged config: expected one line matching '$1'"
        sed -i "s|$1|$2|" "$R$CONF"
    }
    edit '^server_uris = .*' "server_uris = [\"tcp://127.0.0.1:$MPORT\"]"
    edit '^bootstrap_servers = .*' "bootstrap_servers = \"127.0.0.1:$KPORT\""
    edit '^listen = .*' "listen = \"127.0.0.1:$APORT\""
    edit '^client_id = .*' "client_id = \"test-deb-$arch-$$\""
    check "$arch: edited config is valid" in_root /usr/bin/$NAME check-config --config "$CONF"

    local log="$WORK/gateway-$arch.log"
    # chroot and sh exec, so $! is the gateway's pid.
    (exec chroot "$R" /bin/sh -c "cd $STATE && exec setpriv --reuid=$NAME --regid=$NAME --init-groups -- /usr/bin/$NAME run --config $CONF") \
        >"$log" 2>&1 &
    GW_PID=$!
    wait_for "$arch: the admin API (/healthz)" 120 gw_alive_and curl -fs -o /dev/null "http://127.0.0.1:$APORT/healthz"
    wait_for "$arch: MQTT connected (/readyz)" 120 gw_alive_and curl -fs -o /dev/null "http://127.0.0.1:$APORT/readyz"
    check "$arch: gateway runs as $NAME (uid $uid) from the root's /usr/bin" bash -c "
        [[ \$(stat -c %u /proc/$GW_PID) == $uid && \$(readlink /proc/$GW_PID/root) == '$R' ]]"

    local mtopic="sensors/deb$arch/t1" ktopic="edge.sensors.deb$arch.t1"
    seq 1 "$N" | sed "s/^/$arch-/" >"$WORK/$arch.txt"
    mosquitto_pub -p "$MPORT" -q 1 -i "test-deb-arm-pub-$arch" -t "$mtopic" -l <"$WORK/$arch.txt"
    wait_for "$arch: $N records in Kafka topic $ktopic" 180 gw_alive_and kafka_has_all "$ktopic" "$WORK/$arch.txt"
    say "ok: $arch: $N messages in, $(wc -l <"$WORK/consumed.txt") distinct records out ($ktopic)"
    check "$arch: records carry gateway.id = the host name (the packaged config's default)" bash -c "
        timeout 30 kcat -b 127.0.0.1:$KPORT -C -t $ktopic -o beginning -c 1 -q -f '%h\n' | grep -q 'gateway.id=$HOST'"
    wait_for "$arch: the WAL backlog to drain" 60 backlog_is 0
    kill -TERM "$GW_PID"
    local rc=0
    wait "$GW_PID" || rc=$?
    GW_PID=""
    [[ $rc == 0 ]] || die "$arch: gateway exited $rc after SIGTERM (log: $log)"
    say "ok: $arch: SIGTERM -> exit 0"

    # --- 5. purge
    say "$arch: apt-get purge $NAME (in the root)"
    in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "$NAME" </dev/null \
        >"$WORK/apt-purge-$arch.log" 2>&1 || {
        cat "$WORK/apt-purge-$arch.log" >&2
        die "$arch: apt-get purge failed"
    }
    check "$arch: purge warned that it deletes the WAL" grep -q "DELETING the write-ahead log" "$WORK/apt-purge-$arch.log"
    check "$arch: purged: not installed" bash -c "[[ \$(chroot '$R' dpkg-query -W -f='\${db:Status-Abbrev}' $NAME 2>/dev/null | tr -d ' ') =~ ^(|un|pn)\$ ]]"
    check "$arch: purge removed the binary, the unit, the WAL and the config" bash -c "
        [[ ! -e '$R/usr/bin/$NAME' && ! -e '$R$UNIT' && ! -e '$R$STATE' && ! -e '$R$CONF_DIR' ]]"
    check "$arch: purge removed the enable symlink" bash -c "[[ ! -e '$R$WANTS' && ! -L '$R$WANTS' ]]"

    remove_root "$R" || die "$arch: could not remove the root"
    R=""
    say "ok: $arch package: install, check-config, $N messages through the packaged binary, purge ($((SECONDS - t0)) s)"
}

for a in "${archs[@]}"; do
    test_arch "$a"
done
OK=1
say "PASS (${archs[*]})"
