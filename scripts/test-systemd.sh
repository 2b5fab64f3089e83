#!/usr/bin/env bash
# Check the systemd unit without a running systemd (PID 1 need not be systemd):
#
#   scripts/test-systemd.sh [UNIT_FILE]     (default systemd/mqtt-kafka-gateway.service)
#
# 1. `systemd-analyze verify` passes with no output at all. It checks that ExecStart's
#    binary exists: the installed /usr/bin/mqtt-kafka-gateway if there is one, else a
#    copy of the unit pointing at target/release/mqtt-kafka-gateway (or
#    $MKG_GATEWAY_BIN) is verified.
# 2. `systemd-analyze security --offline=true` rates the unit's exposure <= 2.0
#    (MKG_MAX_EXPOSURE to change).
# 3. The settings the gateway relies on are there (Type=notify, the watchdog,
#    RestartPreventExitStatus=2 3, StateDirectory=, the user, a TimeoutStopSec= longer
#    than the worst-case shutdown for the packaged shutdown.grace_period).
# Installs systemd (for systemd-analyze) with apt-get when it is missing and we are root.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME=mqtt-kafka-gateway
UNIT="${1:-$ROOT/systemd/$NAME.service}"
MAX_EXPOSURE="${MKG_MAX_EXPOSURE:-2.0}"

say() { echo "[test-systemd] $*" >&2; }
die() { echo "[test-systemd] FAIL: $*" >&2; exit 1; }

[[ -f "$UNIT" ]] || die "no unit file at $UNIT"
if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing systemd (for systemd-analyze)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd >&2; }
    fi
    command -v systemd-analyze >/dev/null ||
        die "systemd-analyze not found: install it with 'apt-get install systemd' (Debian/Ubuntu)"
fi
say "$(systemd-analyze --version | head -1); PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo '?')"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- 1. verify
exec_bin="$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$UNIT")"
[[ -n "$exec_bin" ]] || die "no ExecStart= in $UNIT"
checked="$UNIT"
if [[ ! -x "$exec_bin" ]]; then
    bin="${MKG_GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/$NAME}"
    [[ -x "$bin" ]] ||
        die "$exec_bin is not installed and $bin does not exist: build it (cargo build --release -p $NAME) or install the package"
    checked="$WORK/$NAME.service"
    sed "s|^ExecStart=$exec_bin|ExecStart=$bin|" "$UNIT" >"$checked"
    say "$exec_bin not installed: verifying a copy whose ExecStart is $bin"
fi
out="$(cd "$WORK" && systemd-analyze verify "$checked" 2>&1)" || die "systemd-analyze verify failed:
$out"
[[ -z "$out" ]] || die "systemd-analyze verify printed warnings:
$out"
say "verify: OK (no warnings)"

# --- 2. security exposure
report="$(cd "$WORK" && systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1)" ||
    die "systemd-analyze security failed:
$report"
exposure="$(sed -n 's/.*Overall exposure level for .*: \([0-9][0-9.]*\) .*/\1/p' <<<"$report")"
[[ -n "$exposure" ]] || die "no exposure level in:
$report"
grep '✗' <<<"$report" | sed 's/^/[test-systemd]   /' >&2 || true
awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }' ||
    die "exposure level $exposure > $MAX_EXPOSURE"
say "security: exposure level $exposure (<= $MAX_EXPOSURE)"

# --- 3. settings the gateway depends on
want() { grep -qx "$1" "$UNIT" || die "$UNIT lacks '$1'"; }
want "Type=notify"
want "NotifyAccess=main"
want "Restart=on-failure"
want "RestartPreventExitStatus=2 3"
want 'ExecReload=/bin/kill -HUP $MAINPID'
want "StateDirectory=$NAME"
want "User=$NAME"
want "NoNewPrivileges=yes"
want "CapabilityBoundingSet="
grep -q "^WatchdogSec=[1-9]" "$UNIT" || die "$UNIT has no WatchdogSec="
grep -q "^RestrictAddressFamilies=.*AF_UNIX" "$UNIT" || die "AF_UNIX is needed for the notify socket"

seconds() { # systemd time span ("90s", "5min", "1min 30s", "90") -> seconds
    local total=0 part n
    for part in $1; do
        n="${part//[!0-9]/}"
        case "$part" in
        *min) total=$((total + n * 60)) ;;
        *ms) ;;
        *h) total=$((total + n * 3600)) ;;
        *) total=$((total + n)) ;;
        esac
    done
    echo "$total"
}
stop="$(seconds "$(sed -n 's/^TimeoutStopSec=//p' "$UNIT")")"
grace_text="$(sed -n '/^\[shutdown\]/,/^\[/ s/^grace_period = "\(.*\)"/\1/p' "$ROOT/config/gateway.example.toml")"
grace="$(seconds "${grace_text:-10s}")"
# Shutdown worst case (gateway/src/run.rs, ingest.rs): 5 s for MQTT acks + 2 s for
# DISCONNECT + grace for Kafka deliveries + grace + 5 s for the WAL thread.
need=$((2 * grace + 12))
((stop > need)) || die "TimeoutStopSec=${stop}s is not longer than the worst-case shutdown (${need}s for grace_period ${grace}s)"
say "TimeoutStopSec=${stop}s > worst-case shutdown ${need}s (grace_period ${grace}s)"
say "OK"
