# shellcheck shell=bash
# Shared by scripts/kafka-local.sh and scripts/mosquitto-local.sh (sourced, not run):
# logging, port and process checks, and the stop/status commands and command dispatch
# of a broker that runs from a DATA_DIR with a pid file.
#
# The sourcing script sets, before it calls any of these:
#   LOG_TAG       log prefix, e.g. kafka-local
#   DAEMON        the broker's name in messages, e.g. Kafka
#   PID_FILE      pid file name inside DATA_DIR, e.g. kafka.pid
#   CMDLINE_MATCH grep pattern the broker's command line matches (so a reused pid
#                 of another process is not taken for the broker)
#   STOP_TIMEOUT  seconds from SIGTERM to SIGKILL
#   POLL          seconds between checks while waiting
# and defines usage() and cmd_start().

log() { echo "[$LOG_TAG] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

now_ms() { date +%s%3N; }

# kill -0 also succeeds for a zombie whose parent never reaps it; treat that as dead.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null)" || return 1
    state="${state%% *}"
    [[ $state != Z ]]
}

# pid from DATA_DIR/$PID_FILE if that process is alive and is our broker.
running_pid() {
    local pidfile="$1/$PID_FILE" pid
    [[ -f $pidfile ]] || return 1
    pid="$(cat "$pidfile")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$CMDLINE_MATCH" || return 1
    echo "$pid"
}

# stop DATA_DIR: SIGTERM, wait for exit, SIGKILL after STOP_TIMEOUT seconds.
cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local data_dir="$1" pid
    if ! pid="$(running_pid "$data_dir")"; then
        log "$DAEMON not running for $data_dir"
        rm -f "$data_dir/$PID_FILE"
        return 0
    fi
    log "stopping $DAEMON (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(($(now_ms) + STOP_TIMEOUT * 1000))
    while alive "$pid"; do
        if (($(now_ms) > deadline)); then
            log "no exit after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$(($(now_ms) + 10000))
        fi
        sleep "$POLL"
    done
    rm -f "$data_dir/$PID_FILE"
    log "$DAEMON stopped"
}

# status DATA_DIR: "running (pid N)", or "stopped" and exit 1.
cmd_status() {
    [[ $# -eq 1 ]] || usage
    local pid
    if pid="$(running_pid "$1")"; then
        echo "running (pid $pid)"
    else
        echo "stopped"
        return 1
    fi
}

# The command line: start | stop | status, then its arguments.
dispatch() {
    [[ $# -ge 1 ]] || usage
    local cmd="$1"
    shift
    case "$cmd" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *)
        # A daemon script's own extra commands (kafka-local.sh acl).
        if [[ $cmd =~ ^[a-z]+$ ]] && declare -F "cmd_$cmd" >/dev/null; then
            "cmd_$cmd" "$@"
        else
            usage
        fi
        ;;
    esac
}
