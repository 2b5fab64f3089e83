#!/usr/bin/env bash
# Start/stop a throwaway single-node Apache Kafka 4.1.1 (KRaft, broker+controller
# in one JVM) from the jars that scripts/install-deps.sh put in the cache.
#
#   scripts/kafka-local.sh start  DATA_DIR PORT CONTROLLER_PORT
#   scripts/kafka-local.sh stop   DATA_DIR
#   scripts/kafka-local.sh status DATA_DIR
#   scripts/kafka-local.sh acl    DATA_DIR ACL_COMMAND_ARGS...
#
# start: writes DATA_DIR/server.properties, formats DATA_DIR/logs (only when it
#        is not formatted yet, so a stop/start keeps the data), launches the
#        broker in its own session with stdout+stderr appended to
#        DATA_DIR/kafka.log, writes DATA_DIR/kafka.pid and waits until
#        127.0.0.1:PORT accepts TCP connections (the broker opens that port only
#        once it is fully started, so this means "ready").
# stop:  SIGTERM, waits for exit (SIGKILL after MKG_KAFKA_STOP_TIMEOUT seconds).
# acl:   Kafka's AclCommand (kafka-acls.sh) against the running broker's first
#        (PLAINTEXT) listener, e.g. `acl DIR --add --allow-principal User:gw
#        --operation Write --topic t`.
#
# Environment (all optional):
#   MKG_CACHE_DIR            cache root (default ~/.cache/mqtt-kafka-gateway)
#   MKG_KAFKA_LIBS           jar dir (default $MKG_CACHE_DIR/kafka-4.1.1/libs)
#   MKG_JAVA                 java binary (default: java on PATH)
#   MKG_KAFKA_JVM_OPTS       replaces the default heap/GC/JIT flags below
#   MKG_KAFKA_START_TIMEOUT  seconds to wait for the port (default 90)
#   MKG_KAFKA_STOP_TIMEOUT   seconds to wait before SIGKILL (default 30)
#   MKG_KAFKA_CDS_DUMP       (used by install-deps.sh) broker JVM dumps a CDS
#                            archive to this path when it exits
#   MKG_KAFKA_AUTO_CREATE    auto.create.topics.enable: true (default) or false
#                            (tests of a route to a topic that does not exist)
#   MKG_KAFKA_EXTRA_PROPS    extra server.properties lines, one per line
#                            (e.g. "log.message.timestamp.after.max.ms=3600000");
#                            a key set again here overrides the default above it
#   MKG_KAFKA_SCRAM_USERS    "name:password ..." SCRAM-SHA-512 credentials written
#                            into the metadata when the log dir is formatted
set -euo pipefail

KAFKA_VERSION=4.1.1
CACHE_ROOT="${MKG_CACHE_DIR:-$HOME/.cache/mqtt-kafka-gateway}"
KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
LIBS="${MKG_KAFKA_LIBS:-$KAFKA_HOME/libs}"
# Class-data-sharing archive built by install-deps.sh; optional (startup ~2.5s -> ~1s).
CDS_ARCHIVE="$KAFKA_HOME/kafka-cds.jsa"
JAVA="${MKG_JAVA:-java}"
DEFAULT_JVM_OPTS="-Xms256m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"
START_TIMEOUT="${MKG_KAFKA_START_TIMEOUT:-90}"
AUTO_CREATE="${MKG_KAFKA_AUTO_CREATE:-true}"
STOP_TIMEOUT="${MKG_KAFKA_STOP_TIMEOUT:-30}"

LOG_TAG=kafka-local
DAEMON=Kafka
PID_FILE=kafka.pid
CMDLINE_MATCH='kafka\.Kafka'
POLL=0.05
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat >&2 <<EOF
usage: $0 start DATA_DIR PORT CONTROLLER_PORT
       $0 stop DATA_DIR
       $0 status DATA_DIR
       $0 acl DATA_DIR ACL_COMMAND_ARGS...
EOF
    exit 2
}

java_opts() {
    # shellcheck disable=SC2206
    JVM_OPTS=(${MKG_KAFKA_JVM_OPTS:-$DEFAULT_JVM_OPTS})
    JVM_OPTS+=(-Djava.awt.headless=true)
    # No log4j2 config file: log4j's default configuration logs to stdout;
    # this property sets its root level (the default would be ERROR only).
    JVM_OPTS+=(-Dlog4j2.level=INFO)
    if [[ -f $CDS_ARCHIVE ]]; then
        # A stale/mismatching archive is ignored by the JVM (-Xshare:auto).
        JVM_OPTS+=(-XX:SharedArchiveFile="$CDS_ARCHIVE" -Xlog:cds=off -Xlog:cds+dynamic=off)
    fi
}

cmd_start() {
    [[ $# -eq 3 ]] || usage
    local data_dir="$1" port="$2" cport="$3"
    [[ $port =~ ^[0-9]+$ && $cport =~ ^[0-9]+$ ]] || die "PORT and CONTROLLER_PORT must be numbers"
    [[ $port != "$cport" ]] || die "PORT and CONTROLLER_PORT must differ"
    [[ $AUTO_CREATE == true || $AUTO_CREATE == false ]] ||
        die "MKG_KAFKA_AUTO_CREATE must be true or false, not '$AUTO_CREATE'"
    [[ -f $LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] ||
        die "Kafka jars not found in $LIBS; run scripts/install-deps.sh first"
    command -v "$JAVA" >/dev/null || die "java not found ($JAVA); run scripts/install-deps.sh"

    mkdir -p "$data_dir"
    data_dir="$(cd "$data_dir" && pwd -P)"
    local pid
    if pid="$(running_pid "$data_dir")"; then
        die "Kafka already running for $data_dir (pid $pid)"
    fi
    # Otherwise waiting for the port could be satisfied by someone else's server.
    port_open "$port" && die "port $port is already in use"
    port_open "$cport" && die "controller port $cport is already in use"

    local props="$data_dir/server.properties"
    cat >"$props" <<EOF
# written by scripts/kafka-local.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$data_dir/logs
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=$AUTO_CREATE
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    if [[ -n ${MKG_KAFKA_EXTRA_PROPS:-} ]]; then
        printf '%s\n' "$MKG_KAFKA_EXTRA_PROPS" >>"$props"
    fi

    java_opts
    local t0
    t0="$(now_ms)"

    if [[ ! -f $data_dir/logs/meta.properties ]]; then
        # Kafka cluster ids are 16 random bytes, base64url without padding.
        # Avoid a leading '-': argparse would take "-t -xyz" for an option
        # (the --cluster-id=ID form below is immune anyway).
        local cid
        while :; do
            cid="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
            [[ $cid != -* ]] && break
        done
        local scram=() user
        for user in ${MKG_KAFKA_SCRAM_USERS:-}; do
            [[ $user == *:* ]] || die "MKG_KAFKA_SCRAM_USERS: '${user%%:*}' has no ':password'"
            scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
        done
        # The SCRAM passwords are not logged.
        log "formatting $data_dir/logs: $JAVA ${JVM_OPTS[*]} -cp '$LIBS/*' kafka.tools.StorageTool format --cluster-id=$cid --config $props --ignore-formatted (${#scram[@]} SCRAM arguments)"
        "$JAVA" "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool \
            format --cluster-id="$cid" --config "$props" --ignore-formatted "${scram[@]}" \
            >>"$data_dir/kafka.log" 2>&1 ||
            { tail -n 30 "$data_dir/kafka.log" >&2; die "storage format failed"; }
    fi
    local t1
    t1="$(now_ms)"

    # setsid: own session/process group, so the broker survives the caller's
    # terminal and is not hit by its Ctrl-C. No job control here, so setsid
    # execs (no fork) and $! is the java pid.
    local extra=()
    [[ -n ${MKG_KAFKA_CDS_DUMP:-} ]] && extra+=(-XX:ArchiveClassesAtExit="$MKG_KAFKA_CDS_DUMP")
    extra+=(-XX:ErrorFile="$data_dir/hs_err_pid%p.log")
    log "starting broker in $data_dir: $JAVA ${JVM_OPTS[*]} ${extra[*]} -cp '$LIBS/*' kafka.Kafka $props"
    (cd "$data_dir" && exec setsid "$JAVA" "${JVM_OPTS[@]}" "${extra[@]}" \
        -cp "$LIBS/*" kafka.Kafka "$props" >>"$data_dir/kafka.log" 2>&1 </dev/null) &
    pid=$!
    echo "$pid" >"$data_dir/kafka.pid"

    local deadline=$((t1 + START_TIMEOUT * 1000))
    while ! port_open "$port"; do
        if ! alive "$pid"; then
            tail -n 40 "$data_dir/kafka.log" >&2
            rm -f "$data_dir/kafka.pid"
            die "Kafka exited during startup (see $data_dir/kafka.log)"
        fi
        if (($(now_ms) > deadline)); then
            tail -n 40 "$data_dir/kafka.log" >&2
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$data_dir/kafka.pid"
            die "Kafka did not open port $port within ${START_TIMEOUT}s (see $data_dir/kafka.log)"
        fi
        sleep 0.05
    done
    local t2
    t2="$(now_ms)"
    log "Kafka ready on 127.0.0.1:$port (pid $pid; format $((t1 - t0))ms, broker start $((t2 - t1))ms)"
}

cmd_acl() {
    [[ $# -ge 2 ]] || usage
    local data_dir="$1"
    shift
    local port
    port="$(sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\).*|\1|p' "$data_dir/server.properties" | tail -n 1)"
    [[ -n $port ]] || die "no PLAINTEXT listener in $data_dir/server.properties"
    java_opts
    "$JAVA" "${JVM_OPTS[@]}" -cp "$LIBS/*" org.apache.kafka.tools.AclCommand \
        --bootstrap-server "127.0.0.1:$port" "$@"
}

dispatch "$@"
