#!/usr/bin/env bash
# End-to-end test of the amd64 Debian package on this machine (as root; CI runs it
# from scripts/test.sh). It leaves the machine as it found it, also on failure.
#
#  1. builds mqtt-kafka-gateway_<v>-1 and <v>-2 (scripts/build-deb.sh --arch amd64)
#  2. dpkg -i: checks the files, the conffile and its permissions, the system user,
#     the state directory, the enable symlink, the packaged config (check-config),
#     and the installed unit against the installed binary (scripts/test-systemd.sh)
#  3. edits the packaged config to point at a local Mosquitto and Kafka (started with
#     scripts/mosquitto-local.sh / kafka-local.sh on free ports) and runs the PACKAGED
#     binary as the package's user, under strace: messages in, records out; then
#     Kafka down, a backlog builds up in the WAL, SIGTERM, exit 0
#  4. every system call the gateway made is allowed by the unit's SystemCallFilter=
#  5. dpkg -r: the WAL (unchanged), the config and the user are still there
#  6. reinstall, then upgrade to -2: WAL unchanged, config edits kept
#  7. Kafka back, the upgraded packaged binary drains the backlog: every message
#     published is in Kafka
#  8. dpkg --purge: the WAL, the config and the enable symlink are gone
#
# Refuses to run if the package is already installed (it would purge it), unless
# MKG_TEST_DEB_FORCE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=mqtt-kafka-gateway
STATE=/var/lib/$NAME
CONF_DIR=/etc/$NAME
CONF=$CONF_DIR/gateway.toml
UNIT=/lib/systemd/system/$NAME.service
WANTS=/etc/systemd/system/multi-user.target.wants/$NAME.service
N1=300 # published while Kafka is up
N2=200 # published while Kafka is down (the backlog that must survive)
KTOPIC=edge.sensors.deb.t1

say() { echo "[test-deb] $*" >&2; }
die() { echo "[test-deb] FAIL: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it installs and removes a package with dpkg)"
for tool in dpkg dpkg-deb setpriv curl kcat mosquitto_pub java adduser; do
    command -v "$tool" >/dev/null ||
        die "$tool not found: run scripts/install-deps.sh (mosquitto-clients, kcat, curl, Java, Kafka jars)"
done
if ! command -v strace >/dev/null; then
    say "installing strace"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends strace >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends strace >&2; } ||
        die "cannot install strace (apt-get install strace)"
fi

status() { dpkg-query -W -f='${db:Status-Abbrev}' "$NAME" 2>/dev/null | tr -d ' ' || true; }
if [[ -n "$(status)" && "$(status)" != un ]]; then
    [[ "${MKG_TEST_DEB_FORCE:-}" == 1 ]] ||
        die "$NAME is installed here ($(status)); this test would purge it. Set MKG_TEST_DEB_FORCE=1 to allow that."
    dpkg --purge "$NAME" >&2
fi
USER_EXISTED=0
getent passwd "$NAME" >/dev/null && USER_EXISTED=1
GROUP_EXISTED=0
getent group "$NAME" >/dev/null && GROUP_EXISTED=1
[[ ! -e "$STATE" ]] || die "$STATE exists; move it away first (this test purges the package)"
[[ ! -e "$CONF_DIR" ]] || die "$CONF_DIR exists; move it away first"

WORK="$(mktemp -d /tmp/mkg-test-deb.XXXXXX)"
chmod 0755 "$WORK"
GW_PID=""
STRACE_PID=""
OK=0

cleanup() {
    set +e
    # The gateway first: a SIGKILLed strace would leave its tracee running.
    if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then kill -KILL "$GW_PID"; fi
    if [[ -n "$STRACE_PID" ]] && kill -0 "$STRACE_PID" 2>/dev/null; then kill -KILL "$STRACE_PID"; fi
    wait 2>/dev/null
    # Anything else running as the user this test created was started by this test.
    if [[ $USER_EXISTED == 0 ]] && getent passwd "$NAME" >/dev/null; then
        for pid in $(pgrep -u "$NAME"); do kill -KILL "$pid"; done
        sleep 0.5
    fi
    bash "$ROOT/scripts/mosquitto-local.sh" stop "$WORK/mosq" >/dev/null 2>&1
    bash "$ROOT/scripts/kafka-local.sh" stop "$WORK/kafka" >/dev/null 2>&1
    if [[ -n "$(status)" && "$(status)" != un ]]; then dpkg --purge "$NAME" >/dev/null 2>&1; fi
    rm -rf "$STATE" "$CONF_DIR"
    rm -f "$WANTS"
    # The mask deb-systemd-helper leaves after a remove (purge removes it).
    if [[ "$(readlink /etc/systemd/system/$NAME.service 2>/dev/null)" == /dev/null ]]; then
        rm -f /etc/systemd/system/$NAME.service
    fi
    if [[ $USER_EXISTED == 0 ]] && getent passwd "$NAME" >/dev/null; then userdel "$NAME"; fi
    if [[ $GROUP_EXISTED == 0 ]] && getent group "$NAME" >/dev/null; then groupdel "$NAME" 2>/dev/null; fi
    if [[ $OK == 1 ]]; then
        rm -rf "$WORK"
    else
        for f in "$WORK"/gateway-*.log; do
            [[ -f "$f" ]] && { echo "----- $f (tail)" >&2; tail -40 "$f" >&2; }
        done
        echo "[test-deb] logs kept in $WORK" >&2
    fi
}
trap cleanup EXIT

# shellcheck source=scripts/test-helpers.sh
source "$ROOT/scripts/test-helpers.sh"

as_user() { setpriv --reuid="$NAME" --regid="$NAME" --init-groups -- "$@"; }

# --- 1. build
say "building the packages"
DEB1="$(bash "$ROOT/scripts/build-deb.sh" --arch amd64 --revision 1)"
DEB2="$(bash "$ROOT/scripts/build-deb.sh" --arch amd64 --revision 2)"
VERSION1="$(dpkg-deb -f "$DEB1" Version)"
VERSION2="$(dpkg-deb -f "$DEB2" Version)"
check "package metadata (Architecture amd64, Depends on libc6 and adduser)" \
    bash -c "[[ \$(dpkg-deb -f '$DEB1' Architecture) == amd64 ]] && dpkg-deb -f '$DEB1' Depends | grep -q 'libc6 (>= ' && dpkg-deb -f '$DEB1' Depends | grep -q adduser"

# --- brokers
MPORT="$(free_port)"
KPORT="$(free_port)"
CPORT="$(free_port)"
APORT="$(free_port)"
mkdir -p "$WORK/mosq" "$WORK/kafka"
bash "$ROOT/scripts/mosquitto-local.sh" start "$WORK/mosq" "$MPORT" >&2
bash "$ROOT/scripts/kafka-local.sh" start "$WORK/kafka" "$KPORT" "$CPORT" >&2

# --- 2. install
say "dpkg -i $(basename "$DEB1")"
dpkg -i "$DEB1" </dev/null >&2
check "installed ($VERSION1)" bash -c "[[ '$(status)' == ii ]]"
check "binary is the release binary" cmp -s /usr/bin/$NAME "${CARGO_TARGET_DIR:-$ROOT/target}/release/$NAME"
check "unit file installed" cmp -s "$UNIT" "$ROOT/systemd/$NAME.service"
check "docs installed" test -f /usr/share/doc/$NAME/copyright -a -f /usr/share/doc/$NAME/README.md
check "config is a conffile" bash -c "dpkg-query -W -f='\${Conffiles}' $NAME | grep -q ' $CONF '"
check "config root:$NAME 0640" bash -c "[[ \$(stat -c '%U:%G %a' $CONF) == 'root:$NAME 640' ]]"
check "config dir root:$NAME 0750" bash -c "[[ \$(stat -c '%U:%G %a' $CONF_DIR) == 'root:$NAME 750' ]]"
check "system user $NAME (uid < 1000, nologin, home $STATE)" bash -c "
    IFS=: read -r _ _ uid _ _ home shell < <(getent passwd $NAME)
    (( uid < 1000 )) && [[ \$home == $STATE && \$shell == /usr/sbin/nologin ]]"
check "state dir $NAME:$NAME 0700" bash -c "[[ \$(stat -c '%U:%G %a' $STATE) == '$NAME:$NAME 700' ]]"
check "enabled (multi-user.target.wants symlink)" bash -c "[[ \$(readlink $WANTS) == $UNIT ]]"
check "packaged config is valid and puts the WAL in $STATE" bash -c "
    out=\$(/usr/bin/$NAME check-config --config $CONF) && grep -q 'WAL in $STATE' <<<\"\$out\""
bash "$ROOT/scripts/test-systemd.sh" "$UNIT"
say "ok: installed unit verified against the installed binary"

# --- 3. configure and run the packaged binary as its user
edit() { # PATTERN REPLACEMENT (exactly one line must match)
    [[ "$(grep -c -- "$1" "$CONF")" == 1 ]] || die "packaged config: expected one line matching '$1'"
    sed -i "s|$1|$2|" "$CONF"
}
edit '^server_uris = .*' "server_uris = [\"tcp://127.0.0.1:$MPORT\"]"
edit '^bootstrap_servers = .*' "bootstrap_servers = \"127.0.0.1:$KPORT\""
edit '^listen = .*' "listen = \"127.0.0.1:$APORT\""
edit '^client_id = .*' "client_id = \"test-deb-$$\""
CONF_SUM="$(sha256sum "$CONF" | cut -d' ' -f1)"
check "edited config is valid" /usr/bin/$NAME check-config --config "$CONF"

RUN=0
start_gateway() { # [strace]
    RUN=$((RUN + 1))
    local log="$WORK/gateway-$RUN.log"
    if [[ "${1:-}" == strace ]]; then
        (cd "$STATE" && exec strace -f -qq -o "$WORK/strace.txt" -- \
            setpriv --reuid="$NAME" --regid="$NAME" --init-groups -- \
            /usr/bin/$NAME run --config "$CONF") >"$log" 2>&1 &
        STRACE_PID=$!
        wait_for "the gateway under strace" 30 bash -c "[[ -n \$(cat /proc/$STRACE_PID/task/$STRACE_PID/children) ]]"
        GW_PID="$(awk '{print $1}' "/proc/$STRACE_PID/task/$STRACE_PID/children")"
    else
        (cd "$STATE" && exec setpriv --reuid="$NAME" --regid="$NAME" --init-groups -- \
            /usr/bin/$NAME run --config "$CONF") >"$log" 2>&1 &
        GW_PID=$!
    fi
    wait_for "the admin API (/healthz)" 60 curl -fsS -o /dev/null "http://127.0.0.1:$APORT/healthz"
    wait_for "MQTT connected (/readyz)" 60 curl -fsS -o /dev/null "http://127.0.0.1:$APORT/readyz"
    check "gateway runs as $NAME" bash -c "[[ \$(ps -o user= -p $GW_PID) == $NAME ]]"
}
stop_gateway() {
    kill -TERM "$GW_PID"
    local rc=0
    if [[ -n "$STRACE_PID" ]]; then
        wait "$STRACE_PID" || rc=$?
        STRACE_PID=""
    else
        wait "$GW_PID" || rc=$?
    fi
    GW_PID=""
    [[ $rc == 0 ]] || die "gateway exited $rc after SIGTERM (log: $WORK/gateway-$RUN.log)"
    say "ok: SIGTERM -> exit 0"
}
backlog() { curl -fsS "http://127.0.0.1:$APORT/backlog" | grep -o '"records":[0-9]*' | head -1 | cut -d: -f2; }
publish() { # PREFIX COUNT
    seq 1 "$2" | sed "s/^/$1-/" >"$WORK/$1.txt"
    mosquitto_pub -p "$MPORT" -q 1 -i "test-deb-pub-$1" -t sensors/deb/t1 -l <"$WORK/$1.txt"
}
kafka_has_all() { # EXPECTED_FILE
    timeout 30 kcat -b "127.0.0.1:$KPORT" -C -t "$KTOPIC" -o beginning -e -q -f '%s\n' 2>/dev/null |
        sort -u >"$WORK/consumed.txt" || true
    [[ -z "$(comm -23 <(sort -u "$1") "$WORK/consumed.txt")" ]]
}

say "run 1: the packaged binary as $NAME under strace"
start_gateway strace
publish a "$N1"
wait_for "$N1 records in Kafka topic $KTOPIC" 120 kafka_has_all "$WORK/a.txt"
say "ok: $N1 messages in, $N1 records out ($KTOPIC)"
HOST="$(cat /proc/sys/kernel/hostname)"
check "records carry gateway.id = the host name (the packaged config's default)" bash -c "
    timeout 30 kcat -b 127.0.0.1:$KPORT -C -t $KTOPIC -o beginning -c 1 -q -f '%h\n' | grep -q 'gateway.id=$HOST'"
wait_for "the backlog to drain" 60 bash -c "[[ \$(curl -fsS http://127.0.0.1:$APORT/backlog | grep -o '\"records\":[0-9]*' | head -1) == '\"records\":0' ]]"

# Kafka down: the next messages stay in the WAL.
bash "$ROOT/scripts/kafka-local.sh" stop "$WORK/kafka" >&2
publish b "$N2"
wait_for "a backlog of $N2 on /backlog" 60 bash -c "[[ \$(curl -fsS http://127.0.0.1:$APORT/backlog | grep -o '\"records\":[0-9]*' | head -1) == '\"records\":$N2' ]]"
say "ok: Kafka down, backlog $(backlog) records in $STATE"
# What `systemctl reload` does (the unit's ExecReload=), under the unit's system call
# filter: the file is read again and the process keeps running.
kill -HUP "$GW_PID"
wait_for "the configuration reload" 30 grep -q "configuration reloaded" "$WORK/gateway-$RUN.log"
check "gateway still running after SIGHUP" kill -0 "$GW_PID"
stop_gateway
check "WAL holds the $N2 records (wal stats)" bash -c "
    as_user() { setpriv --reuid=$NAME --regid=$NAME --init-groups -- \"\$@\"; }
    as_user /usr/bin/$NAME wal stats --config $CONF | grep -q '\"records\":$N2'"

# --- 4. system calls vs. the unit's filter
expand() { # GROUP... -> syscall names (recursively)
    local item
    for item in "$@"; do
        if [[ "$item" == @* ]]; then
            [[ -n "${SEEN[$item]:-}" ]] && continue
            SEEN[$item]=1
            # shellcheck disable=SC2046
            expand $(systemd-analyze syscall-filter --no-pager "$item" | sed -n 's/^    \([-@a-z0-9_]*\)$/\1/p')
        else
            echo "$item"
        fi
    done
}
declare -A SEEN=()
allow="$(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$UNIT")"
deny="$(sed -n 's/^SystemCallFilter=~\(.*\)/\1/p' "$UNIT")"
# shellcheck disable=SC2086
expand $allow | sort -u >"$WORK/allowed.txt"
SEEN=()
# shellcheck disable=SC2086
expand $deny | sort -u >"$WORK/denied.txt"
comm -23 "$WORK/allowed.txt" "$WORK/denied.txt" >"$WORK/permitted.txt"
# strace -f lines: "PID name(args...", skipping "<... name resumed>" continuations.
# Calls before execve(/usr/bin/...) belong to setpriv, not the gateway.
awk '/execve\("\/usr\/bin\/'"$NAME"'"/ { on = 1 } on' "$WORK/strace.txt" |
    sed -nE 's/^[0-9]+ +([a-z0-9_]+)\(.*/\1/p' | sort -u >"$WORK/used.txt"
[[ -s "$WORK/used.txt" ]] || die "no system calls in the strace log"
outside="$(comm -23 "$WORK/used.txt" "$WORK/permitted.txt" | tr '\n' ' ')"
[[ -z "$outside" ]] || die "the gateway used system calls the unit's SystemCallFilter= forbids: $outside"
say "ok: all $(wc -l <"$WORK/used.txt") system calls the gateway made are allowed by SystemCallFilter= ($(tr '\n' ' ' <"$WORK/used.txt"))"

WAL_SUM="$(sha256sum "$STATE/wal.redb" | cut -d' ' -f1)"

# --- 5. remove
say "dpkg -r $NAME"
dpkg -r "$NAME" </dev/null >&2
check "removed, config-files kept (rc)" bash -c "[[ '$(status)' == rc ]]"
check "binary and unit gone" bash -c "[[ ! -e /usr/bin/$NAME && ! -e $UNIT ]]"
check "WAL kept unchanged after remove" bash -c "[[ \$(sha256sum $STATE/wal.redb | cut -d' ' -f1) == $WAL_SUM ]]"
check "config kept after remove" bash -c "[[ \$(sha256sum $CONF | cut -d' ' -f1) == $CONF_SUM ]]"
check "user kept after remove" getent passwd "$NAME"

# --- 6. reinstall, upgrade
say "dpkg -i $(basename "$DEB1") (reinstall)"
dpkg -i "$DEB1" </dev/null >&2
check "WAL unchanged after reinstall" bash -c "[[ \$(sha256sum $STATE/wal.redb | cut -d' ' -f1) == $WAL_SUM ]]"
check "config edits kept after reinstall" bash -c "[[ \$(sha256sum $CONF | cut -d' ' -f1) == $CONF_SUM ]]"
say "dpkg -i $(basename "$DEB2") (upgrade $VERSION1 -> $VERSION2)"
dpkg -i "$DEB2" </dev/null >&2
check "upgraded to $VERSION2" bash -c "[[ \$(dpkg-query -W -f='\${Version}' $NAME) == $VERSION2 ]]"
check "WAL unchanged after upgrade" bash -c "[[ \$(sha256sum $STATE/wal.redb | cut -d' ' -f1) == $WAL_SUM ]]"
check "config edits kept after upgrade" bash -c "[[ \$(sha256sum $CONF | cut -d' ' -f1) == $CONF_SUM ]]"
check "state dir still $NAME:$NAME 0700" bash -c "[[ \$(stat -c '%U:%G %a' $STATE) == '$NAME:$NAME 700' ]]"

# --- 7. the backlog survives into Kafka
bash "$ROOT/scripts/kafka-local.sh" start "$WORK/kafka" "$KPORT" "$CPORT" >&2
say "run 2: the upgraded packaged binary drains the backlog"
start_gateway
cat "$WORK/a.txt" "$WORK/b.txt" >"$WORK/all.txt"
wait_for "all $((N1 + N2)) records in Kafka" 120 kafka_has_all "$WORK/all.txt"
wait_for "the backlog to drain" 60 bash -c "[[ \$(curl -fsS http://127.0.0.1:$APORT/backlog | grep -o '\"records\":[0-9]*' | head -1) == '\"records\":0' ]]"
say "ok: the $N2 records kept through remove/reinstall/upgrade reached Kafka; all $((N1 + N2)) published are there"
stop_gateway

# --- 8. purge
say "dpkg --purge $NAME"
dpkg --purge "$NAME" </dev/null >&2 2>"$WORK/purge.txt" || { cat "$WORK/purge.txt" >&2; die "purge failed"; }
cat "$WORK/purge.txt" >&2
check "purge warned that it deletes the WAL" grep -q "DELETING the write-ahead log" "$WORK/purge.txt"
check "purged: not installed" bash -c "[[ -z '$(status)' || '$(status)' == un || '$(status)' == pn ]]"
check "purge deleted the WAL and the config" bash -c "[[ ! -e $STATE && ! -e $CONF_DIR ]]"
check "purge removed the enable symlink" bash -c "[[ ! -e $WANTS && ! -L $WANTS ]]"

OK=1
say "PASS"
