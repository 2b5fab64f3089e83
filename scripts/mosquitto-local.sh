#!/usr/bin/env bash
# Start/stop a throwaway mosquitto MQTT broker bound to 127.0.0.1.
#
#   scripts/mosquitto-local.sh start  DATA_DIR PORT
#   scripts/mosquitto-local.sh stop   DATA_DIR
#   scripts/mosquitto-local.sh status DATA_DIR
#
# start: writes DATA_DIR/mosquitto.conf, runs `mosquitto -c DATA_DIR/mosquitto.conf -d`
#        (it daemonizes itself and writes DATA_DIR/mosquitto.pid; log in
#        DATA_DIR/mosquitto.log, persistence in DATA_DIR/mosquitto.db) and
#        waits until 127.0.0.1:PORT accepts TCP connections.
# stop:  SIGTERM (mosquitto saves its persistence db on exit), waits for exit,
#        SIGKILL after MKG_MOSQUITTO_STOP_TIMEOUT seconds (default 15).
#
# Environment (optional): MKG_MOSQUITTO (binary, default mosquitto on PATH),
#   MKG_MOSQUITTO_START_TIMEOUT (default 15), MKG_MOSQUITTO_STOP_TIMEOUT (default 15),
#   MKG_MOSQUITTO_AUTOSAVE (autosave_interval in seconds, default 1 so that a SIGKILL
#   test loses little; Mosquitto's own default is 1800),
#   MKG_MOSQUITTO_DEBUG (non-empty: log every packet, `log_type debug`),
#   MKG_MOSQUITTO_EXTRA_CONF (lines appended to mosquitto.conf; a repeated option
#   overrides the one above, e.g. "max_queued_messages 100"),
#   MKG_MOSQUITTO_TCP_NODELAY (set_tcp_nodelay, default false like Mosquitto's own:
#   Nagle's algorithm on; the gateway asks its kernel for quick TCP ACKs so that
#   Nagle does not hold messages back, gateway/src/quickack.rs).
set -euo pipefail

MOSQUITTO="${MKG_MOSQUITTO:-mosquitto}"
START_TIMEOUT="${MKG_MOSQUITTO_START_TIMEOUT:-15}"
STOP_TIMEOUT="${MKG_MOSQUITTO_STOP_TIMEOUT:-15}"
AUTOSAVE="${MKG_MOSQUITTO_AUTOSAVE:-1}"
TCP_NODELAY="${MKG_MOSQUITTO_TCP_NODELAY:-false}"

LOG_TAG=mosquitto-local
DAEMON=mosquitto
PID_FILE=mosquitto.pid
CMDLINE_MATCH=mosquitto
POLL=0.02
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 start DATA_DIR PORT
       $0 stop DATA_DIR
       $0 status DATA_DIR
EOF
    exit 2
}

cmd_start() {
    [[ $# -eq 2 ]] || usage
    local data_dir="$1" port="$2" pid
    [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number"
    command -v "$MOSQUITTO" >/dev/null || die "mosquitto not found; run scripts/install-deps.sh"
    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd -P)"
    if pid="$(running_pid "$data_dir")"; then
        die "mosquitto already running for $data_dir (pid $pid)"
    fi
    port_open "$port" && die "port $port is already in use"
    rm -f "$data_dir/mosquitto.pid"

    local conf="$data_dir/mosquitto.conf"
    # `user`: when started as root, mosquitto otherwise drops to user
    # "mosquitto", which cannot write the pid/log/db files in DATA_DIR.
    cat >"$conf" <<EOF
# written by scripts/mosquitto-local.sh
user $(id -un)
pid_file $data_dir/mosquitto.pid
listener $port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $data_dir/
autosave_interval $AUTOSAVE
set_tcp_nodelay $TCP_NODELAY
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
log_dest file $data_dir/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
${MKG_MOSQUITTO_DEBUG:+log_type debug}
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
${MKG_MOSQUITTO_EXTRA_CONF:-}
EOF

    local t0
    t0="$(now_ms)"
    log "starting: $MOSQUITTO -c $conf -d"
    # Config errors are reported here, before mosquitto daemonizes.
    "$MOSQUITTO" -c "$conf" -d </dev/null >>"$data_dir/mosquitto.log" 2>&1 ||
        { tail -n 20 "$data_dir/mosquitto.log" >&2; die "mosquitto failed to start"; }

    local deadline=$((t0 + START_TIMEOUT * 1000))
    while ! port_open "$port"; do
        if (($(now_ms) > deadline)); then
            tail -n 20 "$data_dir/mosquitto.log" >&2
            if pid="$(running_pid "$data_dir")"; then kill -KILL "$pid" 2>/dev/null || true; fi
            die "mosquitto did not open port $port within ${START_TIMEOUT}s"
        fi
        sleep 0.02
    done
    # The pid file is written right after daemonizing; wait for it too.
    while ! pid="$(running_pid "$data_dir")"; do
        (($(now_ms) > deadline)) && die "mosquitto pid file $data_dir/mosquitto.pid missing"
        sleep 0.02
    done
    log "mosquitto ready on 127.0.0.1:$port (pid $pid, $(($(now_ms) - t0))ms)"
}

dispatch "$@"
