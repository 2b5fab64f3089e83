#!/usr/bin/env bash
# Installs what the integration tests and demos need to run real brokers:
#   - Debian packages mosquitto, mosquitto-clients, kcat, faketime (only if missing);
#   - Debian packages chromium and chromium-driver (headless browser and its
#     WebDriver, for the operator console's end-to-end test; only if missing);
#   - keeps Debian's mosquitto *system service* stopped and disabled (tests
#     start their own mosquitto processes; the service would hold port 1883);
#   - Java >= 17 and Maven (openjdk-17-jre-headless, maven if missing);
#   - the Apache Kafka 4.1.1 jars pinned by tests/kafka/pom.xml, into
#     ${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}/kafka-4.1.1/libs;
#   - a JVM class-data-sharing archive next to it (kafka-cds.jsa) that makes
#     scripts/kafka-local.sh start Kafka about twice as fast (optional: set
#     MKG_SKIP_KAFKA_CDS=1 to skip).
# Idempotent; when everything is in place it only checks (well under a second).
# Prints the Kafka libs dir as its last line. Exports nothing.
set -euo pipefail

KAFKA_VERSION=4.1.1
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
POM="$REPO_ROOT/tests/kafka/pom.xml"
CACHE_ROOT="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="$KAFKA_HOME/libs"
LIBS_MARKER="$KAFKA_HOME/libs.complete"
CDS_ARCHIVE="$KAFKA_HOME/kafka-cds.jsa"
CDS_MARKER="$KAFKA_HOME/kafka-cds.complete"

say() { echo "[install-deps] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && SUDO=(sudo) || SUDO=(__need_root__)
fi
as_root() {
    [[ ${SUDO[0]:-} == __need_root__ ]] && die "need root (or sudo) to run: $*"
    "${SUDO[@]}" "$@"
}

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

APT_UPDATED=0
apt_install() {
    say "installing Debian packages: $*"
    # Debian's convention to keep maintainer scripts from starting services
    # (mosquitto would otherwise be started on port 1883 by its postinst).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    {
        if [[ $APT_UPDATED -eq 0 ]]; then
            say "apt-get update"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
            APT_UPDATED=1
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
    } || rc=$?
    [[ $made_policy -eq 1 ]] && as_root rm -f "$policy"
    [[ $rc -eq 0 ]] || die "apt-get install $* failed"
}

# ---------------------------------------------------------------- packages
missing=()
# Brokers and clients for the tests and the demo; C/C++ tool chain for the vendored
# librdkafka, OpenSSL, curl and zlib builds of the rdkafka crate; curl for the demo;
# faketime (libfaketime) for the clock-jump test.
for p in mosquitto mosquitto-clients kcat cmake g++ make perl curl faketime; do
    pkg_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
else
    say "mosquitto, mosquitto-clients, kcat, faketime, build tools: already installed"
fi
# A real headless browser for the operator console's end-to-end test
# (tests/e2e/console_page.rs drives it through chromedriver's WebDriver API).
missing=()
for p in chromium chromium-driver; do
    pkg_installed "$p" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    apt_install "${missing[@]}"
else
    say "chromium, chromium-driver: already installed"
fi
if ! command -v cargo >/dev/null 2>&1 && [[ ! -x $HOME/.cargo/bin/cargo ]]; then
    die "Rust is not installed: install it with rustup (https://rustup.rs), then re-run"
fi
# rustfmt and clippy: CI checks the format and the lints (cargo xtask ci).
export PATH="$HOME/.cargo/bin:$PATH"
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null; then
            say "adding the Rust component $c"
            rustup component add "$c" || die "cannot add the Rust component $c (rustup component add $c)"
        else
            die "cargo $c missing: install the Rust component $c"
        fi
    fi
done

# ------------------------------------------- mosquitto system service off
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if systemctl is-active --quiet mosquitto.service 2>/dev/null ||
        systemctl is-enabled --quiet mosquitto.service 2>/dev/null; then
        say "stopping and disabling the mosquitto system service (systemd)"
        as_root systemctl disable --now mosquitto.service
    fi
else
    # No systemd (containers): sysv init script + its pid file.
    sys_pidfile=/run/mosquitto/mosquitto.pid
    if [[ -s $sys_pidfile ]] && kill -0 "$(cat "$sys_pidfile")" 2>/dev/null; then
        say "stopping the mosquitto system service (pid $(cat "$sys_pidfile"))"
        if [[ -x /etc/init.d/mosquitto ]]; then
            as_root /etc/init.d/mosquitto stop || true
        fi
        if [[ -s $sys_pidfile ]] && kill -0 "$(cat "$sys_pidfile")" 2>/dev/null; then
            as_root kill "$(cat "$sys_pidfile")" || true
        fi
    fi
    if compgen -G '/etc/rc[2-5].d/S*mosquitto' >/dev/null && command -v update-rc.d >/dev/null; then
        say "disabling the mosquitto system service at boot (update-rc.d)"
        as_root update-rc.d mosquitto disable >/dev/null 2>&1 || true
    fi
fi
if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    say "WARNING: something still listens on 127.0.0.1:1883 (not started by this script)"
fi
say "mosquitto system service: not running, disabled"

# ------------------------------------------------------------ java, maven
java_major() {
    local v
    v="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')" || return 1
    [[ -n $v ]] || return 1
    v="${v#1.}"
    echo "${v%%[.+-]*}"
}
need=()
jm="$(java_major 2>/dev/null || echo 0)"
if ! command -v java >/dev/null || [[ $jm -lt 17 ]]; then
    need+=(openjdk-17-jre-headless)
fi
command -v mvn >/dev/null || need+=(maven)
if [[ ${#need[@]} -gt 0 ]]; then
    apt_install "${need[@]}"
    jm="$(java_major 2>/dev/null || echo 0)"
    [[ $jm -ge 17 ]] || die "java on PATH is version $jm, need >= 17 (see update-alternatives --config java)"
fi
say "java $jm: $(command -v java); maven: $(command -v mvn)"

# ------------------------------------------------------------- Kafka jars
[[ -f $POM ]] || die "missing $POM"
pom_sum="$(sha256sum "$POM" | cut -d' ' -f1)"
if [[ -f $LIBS_MARKER && $(cat "$LIBS_MARKER") == "$pom_sum" && -f $LIBS/kafka_2.13-$KAFKA_VERSION.jar ]]; then
    say "Kafka $KAFKA_VERSION jars: already in $LIBS"
else
    say "fetching Kafka $KAFKA_VERSION jars with Maven into $LIBS"
    mkdir -p "$KAFKA_HOME"
    tmp="$(mktemp -d "$KAFKA_HOME/libs.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    # Debian's Maven 3.8 prints stray ANSI resets even with -B; keep stdout
    # for the final libs path only.
    mvn -q -B -f "$POM" dependency:copy-dependencies -DoutputDirectory="$tmp" 2>&1 |
        sed 's/\x1b\[[0-9;]*m//g' >&2 ||
        die "maven could not fetch the Kafka jars"
    [[ -f $tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13-$KAFKA_VERSION.jar missing after maven run"
    rm -f "$LIBS_MARKER" "$CDS_MARKER" "$CDS_ARCHIVE"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    trap - EXIT
    echo "$pom_sum" >"$LIBS_MARKER"
    say "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1))"
fi

# ------------------------------------------- class-data-sharing archive
# Dumped by a short broker run with -XX:ArchiveClassesAtExit. Only valid for
# this exact JVM build and jar set: the marker records both. A stale archive
# is harmless (the JVM ignores it), it just gives no speed-up.
cds_key="$(java -version 2>&1 | tr '\n' ' ') $pom_sum"
if [[ ${MKG_SKIP_KAFKA_CDS:-0} == 1 ]]; then
    say "Kafka CDS archive: skipped (MKG_SKIP_KAFKA_CDS=1)"
elif [[ -f $CDS_MARKER && $(cat "$CDS_MARKER") == "$cds_key" && -f $CDS_ARCHIVE ]]; then
    say "Kafka CDS archive: already at $CDS_ARCHIVE"
else
    say "building Kafka CDS archive (runs a broker for a few seconds)"
    rm -f "$CDS_MARKER" "$CDS_ARCHIVE"
    free_port() {
        local p
        while :; do
            p=$((20000 + RANDOM % 30000))
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
        done
    }
    kport="$(free_port)"
    cport="$(free_port)"
    while [[ $cport == "$kport" ]]; do cport="$(free_port)"; done
    work="$(mktemp -d)"
    jsa_tmp="$KAFKA_HOME/kafka-cds.jsa.tmp.$$"
    cleanup_cds() {
        "$REPO_ROOT/scripts/kafka-local.sh" stop "$work/kafka" >/dev/null 2>&1 || true
        rm -rf "$work" "$jsa_tmp"
    }
    trap cleanup_cds EXIT
    if MKG_KAFKA_LIBS="$LIBS" MKG_KAFKA_CDS_DUMP="$jsa_tmp" \
        "$REPO_ROOT/scripts/kafka-local.sh" start "$work/kafka" "$kport" "$cport"; then
        # Exercise produce, consumer-group and admin paths so their classes get archived.
        if command -v kcat >/dev/null; then
            echo warmup | timeout 20 kcat -b "127.0.0.1:$kport" -t cds-warmup -P || true
            timeout 20 kcat -b "127.0.0.1:$kport" -G cds-warmup cds-warmup -o beginning -c 1 -q >/dev/null || true
            timeout 20 kcat -b "127.0.0.1:$kport" -L >/dev/null || true
        fi
        "$REPO_ROOT/scripts/kafka-local.sh" stop "$work/kafka"
        if [[ -s $jsa_tmp ]]; then
            mv "$jsa_tmp" "$CDS_ARCHIVE"
            echo "$cds_key" >"$CDS_MARKER"
            say "Kafka CDS archive: $CDS_ARCHIVE ($(du -sh "$CDS_ARCHIVE" | cut -f1))"
        else
            say "WARNING: JVM wrote no CDS archive; Kafka will just start slower"
        fi
    else
        say "WARNING: could not run Kafka to build the CDS archive; Kafka will just start slower"
    fi
    cleanup_cds
    trap - EXIT
fi

say "done. Kafka libs dir:"
echo "$LIBS"
