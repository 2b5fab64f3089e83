#!/usr/bin/env bash
# The benchmark: every figure of issue 4 next to its ceiling, in one run, one table.
#
#   scripts/bench.sh            bounded default run (4-5 minutes on the 2-core dev machine)
#   scripts/bench.sh --quick    smaller counts, for development (1-2 minutes)
#
# Starts a throwaway Mosquitto and Kafka (scripts/mosquitto-local.sh,
# scripts/kafka-local.sh) on free loopback ports in a temp dir and measures, with
# 256-byte payloads and QoS 1 (docs/BENCHMARKS.md explains each one):
#
#   1. ingest    Mosquitto's delivery ceiling (the better of mosquitto_sub -q 1 and a
#                rumqttc subscriber, tests/src/bin/mqttsub.rs; both ack at once) vs
#                the gateway's durable ingest (committed + PUBACKed) with Kafka down
#   2. drain     a 1M-record WAL backlog forwarded to Kafka vs `kcat -P` producing the
#                same records (key, 6 headers) from a file, acks=all + idempotence
#   3. e2e       loadgen -> Mosquitto -> gateway -> Kafka, until all are in Kafka, vs
#                the naive `mosquitto_sub -q 1 | kcat -P` (not durable)
#   4. latency   MQTT publish -> readable in Kafka, p50/p99/p99.9 at 1,000 and 10,000
#                msg/s (`latency` reads the send time loadgen puts in the payload)
#   5. RSS       gateway VmRSS idle; VmHWM under full load (3), while draining a 1M
#                backlog (2) and during the first seconds with a 10M backlog (7)
#   6. disk      /proc/PID/io write_bytes per payload byte at 1,000/s (4) and full
#                speed (3)
#   7. ready     exec -> /readyz 200 with a 10M-record backlog
#   8. size      stripped release binary
#
# Backlogs are built with `walfill` (tests/src/bin/walfill.rs): it writes the WAL
# through the `wal` crate with the records the gateway would write; publishing 10M
# messages through Mosquitto would take longer than the whole benchmark.
#
# Environment (all optional; --quick changes the defaults shown in brackets):
#   BENCH_INGEST=500000 [100000]   messages for 1 (ceiling and gateway each)
#   BENCH_E2E=1000000 [200000]     messages for 3 (gateway and naive each)
#   BENCH_BACKLOG=1000000 [200000] backlog drained in 2
#   BENCH_BIG_BACKLOG=10000000 [1000000] backlog of 5 and 7
#   BENCH_LAT_SECS=30 [10]         seconds of load per latency rate
#   BENCH_BIG_SECS=15 [5]          seconds the gateway drains the big backlog (RSS)
#   BENCH_PUBLISHERS=4  BENCH_INFLIGHT=1000  BENCH_SIZE=256
#   BENCH_GATEWAY_EXTRA=...        extra TOML appended to every gateway config, e.g.
#                                  $'[kafka.properties]\n"linger.ms" = "20"'
#   BENCH_WAL_EXTRA=...            extra TOML in the [wal] table
#   BENCH_MOSQUITTO_AUTOSAVE=1800  Mosquitto's autosave_interval (the tests use 1)
#   BENCH_DIR=...                  work dir (default: mktemp -d under /tmp)
#   BENCH_NO_BUILD=1               skip cargo build
#   BENCH_KEEP=1                   keep the work dir (logs, JSON of every phase)
#   BENCH_RESULTS=FILE             append the results as one JSON line to FILE
#   CARGO_TARGET_DIR               where the release binaries are (default target/)
#   MKG_KAFKA_JVM_OPTS             passed to scripts/kafka-local.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
export PATH="$HOME/.cargo/bin:$PATH"

QUICK=0
for a in "$@"; do
    case "$a" in
    --quick) QUICK=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench: unknown argument $a (try --help)" >&2
        exit 2
        ;;
    esac
done
q() { if ((QUICK)); then echo "$2"; else echo "$1"; fi; }
N_INGEST="${BENCH_INGEST:-$(q 500000 100000)}"
N_E2E="${BENCH_E2E:-$(q 1000000 200000)}"
N_BACKLOG="${BENCH_BACKLOG:-$(q 1000000 200000)}"
N_BIG="${BENCH_BIG_BACKLOG:-$(q 10000000 1000000)}"
LAT_SECS="${BENCH_LAT_SECS:-$(q 30 10)}"
BIG_SECS="${BENCH_BIG_SECS:-$(q 15 5)}"
PUBS="${BENCH_PUBLISHERS:-4}"
INFLIGHT="${BENCH_INFLIGHT:-1000}"
SIZE="${BENCH_SIZE:-256}"
TOPICS=8

say() { echo "bench: $*" >&2; }
die() {
    echo "bench: error: $*" >&2
    exit 1
}
now_ms() { date +%s%3N; }

for tool in mosquitto mosquitto_sub kcat curl python3 java; do
    command -v "$tool" >/dev/null ||
        die "$tool not found; run scripts/install-deps.sh (installs Mosquitto, kcat and the Kafka jars)"
done

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    # Two invocations: built together, cargo would compile the shipped binary with the
    # test-only `failpoints` feature (the tools depend on the gateway with it).
    say "building the release gateway and the bench tools"
    cargo build --release --locked -q -p mqtt-kafka-gateway
    cargo build --release --locked -q -p mkg-e2e --bin loadgen --bin latency --bin walfill --bin mqttsub --bin kprod
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
GW_BIN="$TARGET/release/mqtt-kafka-gateway"
LOADGEN="$TARGET/release/loadgen"
LATENCY="$TARGET/release/latency"
WALFILL="$TARGET/release/walfill"
MQTTSUB="$TARGET/release/mqttsub"
KPROD="$TARGET/release/kprod"
for b in "$GW_BIN" "$LOADGEN" "$LATENCY" "$WALFILL" "$MQTTSUB" "$KPROD"; do
    [[ -x $b ]] || die "missing $b (build first, or drop BENCH_NO_BUILD)"
done

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
declare -A USED=()
port() {
    local p
    p="$(free_port)"
    while [[ -n ${USED[$p]:-} ]]; do p="$(free_port)"; done
    USED[$p]=1
    echo "$p"
}
MQ_PORT="$(port)"
K_PORT="$(port)"
KC_PORT="$(port)"
A_PORT="$(port)"
DEAD_PORT="$(port)" # nothing listens here: "Kafka stopped" for the ingest phase
BOOT="127.0.0.1:$K_PORT"

DIR="${BENCH_DIR:-$(mktemp -d /tmp/mkg-bench.XXXXXX)}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
GW_PID=""
BG_PIDS=()
cleanup() {
    local rc=$?
    local p
    for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
    bash "$ROOT/scripts/kafka-local.sh" stop "$DIR/kafka" >/dev/null 2>&1 || true
    bash "$ROOT/scripts/mosquitto-local.sh" stop "$DIR/mosquitto" >/dev/null 2>&1 || true
    if [[ ${BENCH_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "bench: work dir kept: $DIR" >&2
    else
        rm -rf "$DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

R="$DIR/results"
mkdir -p "$R"
# put KEY VALUE: one result, read by the report at the end.
put() { echo "$2" >"$R/$1"; }

say "work dir $DIR ($( ((QUICK)) && echo quick || echo default) run)"
put mode "$( ((QUICK)) && echo quick || echo default)"
put git "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- gateway wal admin 2>/dev/null || echo -dirty)"
# 8. Binary size (the release profile strips; `strip` again to be sure).
cp "$GW_BIN" "$DIR/gw-stripped"
strip "$DIR/gw-stripped" 2>/dev/null || true
put bin_bytes "$(stat -c %s "$GW_BIN")"
put bin_stripped_bytes "$(stat -c %s "$DIR/gw-stripped")"
rm -f "$DIR/gw-stripped"
# Disk probe: one 4 KiB write + fdatasync where the WALs live.
put fsync_us "$(dd if=/dev/zero of="$DIR/.probe" bs=4k count=300 oflag=dsync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) t = $(i-1); print int(t * 1e6 / 300) }')"
rm -f "$DIR/.probe"
idle_ticks() { awk '/^cpu / { print $5 + $6; exit }' /proc/stat; }
T_START=$(now_ms)
IDLE_START=$(idle_ticks)

say "starting Mosquitto (:$MQ_PORT) and Kafka (:$K_PORT)"
# Mosquitto's own autosave_interval (1800 s), not the test rig's 1 s: its save blocks its
# only thread, and after a heavy phase that stalled delivery to every subscriber
# for up to 0.5 s (docs/BENCHMARKS.md, 4). BENCH_MOSQUITTO_AUTOSAVE=1 measures that.
MKG_MOSQUITTO_AUTOSAVE="${BENCH_MOSQUITTO_AUTOSAVE:-1800}" bash scripts/mosquitto-local.sh start "$DIR/mosquitto" "$MQ_PORT"
bash scripts/kafka-local.sh start "$DIR/kafka" "$K_PORT" "$KC_PORT"
MQ_PID="$(cat "$DIR/mosquitto/mosquitto.pid")"
K_PID="$(cat "$DIR/kafka/kafka.pid")"
HZ=$(getconf CLK_TCK)
# Create the topics (auto-create, 3 partitions) with one record each.
for t in bench big kcatref kprodref naive; do
    echo "create" | timeout 60 kcat -b "$BOOT" -t "$t" -P -X acks=all || die "cannot create topic $t"
done
for t in bench big kcatref kprodref naive; do
    for _ in $(seq 1 100); do
        timeout 10 kcat -b "$BOOT" -L -t "$t" 2>/dev/null | grep -q 'partition 2,' && break
        sleep 0.2
    done
done

# Backlogs, built first so their disk writes do not disturb the measurements.
say "building WAL backlogs: $N_BACKLOG and $N_BIG records (walfill)"
rm -rf "$DIR/wal-backlog" "$DIR/wal-big" "$DIR/wal-live" "$DIR/wal-ingest"
"$WALFILL" --dir "$DIR/wal-backlog" --records "$N_BACKLOG" --size "$SIZE" --run-id backlog \
    >"$R/walfill_backlog.json"
"$WALFILL" --dir "$DIR/wal-big" --records "$N_BIG" --size "$SIZE" --run-id big \
    --topic-prefix big/dev >"$R/walfill_big.json"
sync

# --- gateway control -------------------------------------------------------------
ADMIN="http://127.0.0.1:$A_PORT"
METRICS=""
scrape() { METRICS="$(curl -fsS --max-time 2 "$ADMIN/metrics" 2>/dev/null)" || METRICS=""; }
metric() { awk -v n="$1" '$1 == n { printf "%d\n", $2; f = 1 } END { if (!f) print 0 }' <<<"$METRICS"; }
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$ADMIN$1" 2>/dev/null || true; }

# gw_start NAME WAL_DIR BOOTSTRAP KAFKA_TOPIC MQTT_FILTER: start a gateway; sets
# GW_PID, GW_EXEC_MS (just before exec) and GW_READY_MS (first /readyz 200).
gw_start() {
    local name=$1 wal=$2 boot=$3 topic=$4 filter=$5
    cat >"$DIR/$name.toml" <<EOF
gateway_id = "bench-$name"
log = "info"
[mqtt]
server_uris = ["tcp://127.0.0.1:$MQ_PORT"]
client_id = "mkg-bench-$name"
topics = [{ filter = "$filter", qos = 1 }]
[kafka]
bootstrap_servers = "$boot"
topic = "$topic"
[wal]
dir = "$wal"
${BENCH_WAL_EXTRA:-}
[admin]
listen = "127.0.0.1:$A_PORT"
${BENCH_GATEWAY_EXTRA:-}
EOF
    "$GW_BIN" check-config --config "$DIR/$name.toml" >/dev/null
    GW_EXEC_MS=$(now_ms)
    "$GW_BIN" run --config "$DIR/$name.toml" >"$DIR/$name.log" 2>&1 &
    GW_PID=$!
    local deadline=$((GW_EXEC_MS + 120000))
    while [[ $(status_of /readyz) != 200 ]]; do
        kill -0 "$GW_PID" 2>/dev/null || {
            tail -20 "$DIR/$name.log" >&2
            die "gateway $name exited"
        }
        (($(now_ms) < deadline)) || die "gateway $name not ready after 120 s"
        sleep 0.005
    done
    GW_READY_MS=$(now_ms)
}
gw_stop() {
    kill -TERM "$GW_PID" 2>/dev/null || true
    wait "$GW_PID" 2>/dev/null || true
    GW_PID=""
}
# The gateway's WAL commit-duration histogram (from the last scrape), and what
# changed between two of them: commits, their p99 bucket and the share over 20 ms.
commit_hist() { grep '^mkg_wal_commit_duration_seconds_bucket' <<<"$METRICS" || true; }
commit_hist_diff() {
    python3 - "$1" "$2" <<'PY'
import re, sys
def load(f):
    return {m[1]: int(m[2]) for m in re.finditer(r'le="([^"]+)"\} (\d+)', open(f).read())}
a, b = load(sys.argv[1]), load(sys.argv[2])
d = {k: b[k] - a.get(k, 0) for k in b}
total = d.get("+Inf", 0)
keys = sorted(d, key=lambda k: float("inf") if k == "+Inf" else float(k))
p99 = next((k for k in keys if d[k] >= 0.99 * total), "+Inf")
over = total - d.get("0.02", 0)
print(f"{total:,} durable commits, p99 <= {p99} s, {over:,} ({100 * over / max(total, 1):.1f}%) over 20 ms")
PY
}
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$GW_PID/status"; }
hwm_kb() { awk '/^VmHWM/ { print $2 }' "/proc/$GW_PID/status"; }
reset_hwm() { echo 5 >"/proc/$GW_PID/clear_refs"; }
wbytes() { awk '/^write_bytes/ { print $2 }' "/proc/$GW_PID/io"; }
# Per-thread CPU ticks of a process, summed by thread name: "name ticks" lines.
thread_ticks() {
    local f
    for f in /proc/"$1"/task/*/stat; do
        awk '{ line = $0; comm = line; sub(/^[^(]*\(/, "", comm); sub(/\).*$/, "", comm);
               gsub(/ /, "_", comm); sub(/.*\) /, "", line); split(line, a, " ");
               print comm, a[12] + a[13] }' "$f" 2>/dev/null || true
    done | awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# us_per_msg TICKS0 TICKS1 N: CPU microseconds per message.
us_per_msg() { python3 -c "print(round(($2 - $1) * 1e6 / $HZ / $3, 1))"; }
# threads_per_msg FILE0 FILE1 N: "thread us/msg, ..." from two thread_ticks snapshots.
threads_per_msg() {
    join "$1" "$2" | awk -v hz="$HZ" -v n="$3" '
        { d = ($3 - $2) * 1e6 / hz / n; if (d > 0) printf "%s %.1f, ", $1, d }' | sed 's/, $//'
}

# wait_metric EXPR TIMEOUT_S: poll /metrics every 50 ms until the awk condition EXPR
# over the metrics (as variables m["name"]) holds; sets DONE_MS.
wait_metric() {
    local expr=$1 limit=$(($(now_ms) + $2 * 1000))
    while :; do
        scrape
        if awk "{ m[\$1] = \$2 } END { exit !($expr) }" <<<"$METRICS"; then
            DONE_MS=$(now_ms)
            return 0
        fi
        kill -0 "$GW_PID" 2>/dev/null || die "gateway exited (see $DIR)"
        (($(now_ms) < limit)) || return 1
        sleep 0.05
    done
}

# loadgen PREFIX N RUN_ID [RATE]: publish N messages to PREFIX/I/T; result JSON in
# $R/loadgen_RUN_ID.json.
loadgen() {
    "$LOADGEN" --port "$MQ_PORT" --publishers "$PUBS" --messages "$2" --size "$SIZE" --qos 1 \
        --topic-prefix "$1" --topics "$TOPICS" --inflight "$INFLIGHT" --rate "${4:-0}" \
        --run-id "$3" >"$R/loadgen_$3.json" 2>"$DIR/loadgen_$3.err" ||
        die "loadgen $3 failed: $(cat "$DIR/loadgen_$3.err" "$R/loadgen_$3.json")"
}
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
mq_drops() { grep -c 'Outgoing messages are being dropped' "$DIR/mosquitto/mosquitto.log" || true; }

# wait_connected CLIENT_ID: until Mosquitto logged the client's connection, then a
# moment for its SUBSCRIBE (sent right after CONNACK).
wait_connected() {
    for _ in $(seq 1 200); do
        grep -q "as $1 " "$DIR/mosquitto/mosquitto.log" && break
        sleep 0.05
    done
    grep -q "as $1 " "$DIR/mosquitto/mosquitto.log" || die "$1 did not connect to Mosquitto"
    sleep 0.3
}

# --- 1. ingest vs Mosquitto's ceiling ------------------------------------------------
say "1a. Mosquitto ceiling: $N_INGEST messages to mosquitto_sub -q 1"
(
    mosquitto_sub -p "$MQ_PORT" -q 1 -i ceiling -t 'ceil/#' -C "$N_INGEST" >/dev/null
    now_ms >"$R/ceiling_end_ms"
    times >"$DIR/ceiling_sub_times"
) &
SUB_PID=$!
BG_PIDS+=("$SUB_PID")
wait_connected ceiling
M0=$(cpu_ticks "$MQ_PID")
loadgen ceil/dev "$N_INGEST" ceil
wait "$SUB_PID" || die "mosquitto_sub failed"
put ceiling_mq_cpu_us "$(us_per_msg "$M0" "$(cpu_ticks "$MQ_PID")" "$N_INGEST")"
put ceiling_sub_cpu_us "$(python3 -c "
import re; t = open('$DIR/ceiling_sub_times').read().splitlines()[-1].split()
s = sum(int(m) * 60 + float(x) for m, x in (re.match(r'(\d+)m([\d.]+)s', v).groups() for v in t))
print(round(s * 1e6 / $N_INGEST, 1))")"
put ceiling_c_rate "$(python3 -c "print(round($N_INGEST * 1000 / ($(cat "$R/ceiling_end_ms") - $(jget "$R/loadgen_ceil.json" start_unix_ms))))")"
put ceiling_pub_rate "$(jget "$R/loadgen_ceil.json" acked_rate)"

# The second ceiling: a rumqttc subscriber with automatic acks (written in bulk per
# read, like the gateway's). The better of the two is the ceiling.
say "1a. Mosquitto ceiling: $N_INGEST messages to a rumqttc QoS 1 subscriber (mqttsub)"
"$MQTTSUB" --port "$MQ_PORT" --topic 'ceil2/#' --messages "$N_INGEST" --client-id ceiling2 \
    >"$R/mqttsub.json" 2>"$DIR/mqttsub.err" &
SUB_PID=$!
BG_PIDS+=("$SUB_PID")
for _ in $(seq 1 200); do grep -q ready "$DIR/mqttsub.err" && break; sleep 0.05; done
grep -q ready "$DIR/mqttsub.err" || die "mqttsub did not subscribe: $(cat "$DIR/mqttsub.err")"
loadgen ceil2/dev "$N_INGEST" ceil2
wait "$SUB_PID" || die "mqttsub failed: $(cat "$DIR/mqttsub.err")"
put ceiling_rust_rate "$(python3 -c "print(round($N_INGEST * 1000 / ($(jget "$R/mqttsub.json" end_unix_ms) - $(jget "$R/loadgen_ceil2.json" start_unix_ms))))")"
put ceiling_rate "$(( $(cat "$R/ceiling_c_rate") > $(cat "$R/ceiling_rust_rate") ? $(cat "$R/ceiling_c_rate") : $(cat "$R/ceiling_rust_rate") ))"

say "1b. gateway ingest with Kafka stopped: $N_INGEST messages"
gw_start ingest "$DIR/wal-ingest" "127.0.0.1:$DEAD_PORT" bench 'ingest/#'
scrape
A0=$(metric mkg_mqtt_messages_acked_total)
G0=$(cpu_ticks "$GW_PID")
M0=$(cpu_ticks "$MQ_PID")
thread_ticks "$GW_PID" >"$DIR/threads0"
loadgen ingest/dev "$N_INGEST" ingest
wait_metric "m[\"mkg_mqtt_messages_acked_total\"] >= $((A0 + N_INGEST)) && m[\"mkg_wal_records_committed_total\"] >= $((A0 + N_INGEST))" 300 ||
    die "gateway did not commit and acknowledge $N_INGEST messages"
put ingest_rate "$(python3 -c "print(round($N_INGEST * 1000 / ($DONE_MS - $(jget "$R/loadgen_ingest.json" start_unix_ms))))")"
put ingest_commits "$(metric mkg_wal_commits_total)"
put ingest_gw_cpu_us "$(us_per_msg "$G0" "$(cpu_ticks "$GW_PID")" "$N_INGEST")"
put ingest_mq_cpu_us "$(us_per_msg "$M0" "$(cpu_ticks "$MQ_PID")" "$N_INGEST")"
thread_ticks "$GW_PID" >"$DIR/threads1"
put ingest_threads "$(threads_per_msg "$DIR/threads0" "$DIR/threads1" "$N_INGEST")"
gw_stop
rm -rf "$DIR/wal-ingest"

# --- 3, 4, 5, 6 on one gateway with an empty WAL --------------------------------------
say "starting the gateway for e2e and latency"
gw_start live "$DIR/wal-live" "$BOOT" bench 'load/#'
# Warm-up: connections, metadata, first batches.
loadgen load/warm 2000 warm
wait_metric 'm["mkg_kafka_records_forwarded_total"] >= 2000 && m["mkg_backlog_records"] == 0' 120 ||
    die "warm-up did not reach Kafka"
sleep 3
put rss_idle_kb "$(rss_kb)"

say "3a. end to end: $N_E2E messages through the gateway"
scrape
C0=$(metric mkg_wal_records_committed_total)
K0=$(metric mkg_wal_commits_total)
reset_hwm
W0=$(wbytes)
G0=$(cpu_ticks "$GW_PID")
M0=$(cpu_ticks "$MQ_PID")
KC0=$(cpu_ticks "$K_PID")
thread_ticks "$GW_PID" >"$DIR/threads0"
loadgen load/dev "$N_E2E" e2e &
LG=$!
wait_metric "m[\"mkg_wal_records_committed_total\"] >= $((C0 + N_E2E)) && m[\"mkg_backlog_records\"] == 0" 900 ||
    die "the gateway did not forward all $N_E2E messages"
wait "$LG"
put e2e_rate "$(python3 -c "print(round($N_E2E * 1000 / ($DONE_MS - $(jget "$R/loadgen_e2e.json" start_unix_ms))))")"
put e2e_ingest_rate "$(jget "$R/loadgen_e2e.json" acked_rate)"
put rss_load_kb "$(hwm_kb)"
put wa_full "$(python3 -c "print(round(($(wbytes) - $W0) / ($N_E2E * $SIZE), 2))")"
put e2e_batch "$(python3 -c "print(round(($(metric mkg_wal_records_committed_total) - $C0) / max(1, $(metric mkg_wal_commits_total) - $K0), 1))")"
put e2e_gw_cpu_us "$(python3 -c "print(round(($(cpu_ticks "$GW_PID") - $G0) * 1e6 / $HZ / $N_E2E, 1))")"
put e2e_mq_cpu_us "$(python3 -c "print(round(($(cpu_ticks "$MQ_PID") - $M0) * 1e6 / $HZ / $N_E2E, 1))")"
put e2e_kafka_cpu_us "$(python3 -c "print(round(($(cpu_ticks "$K_PID") - $KC0) * 1e6 / $HZ / $N_E2E, 1))")"
thread_ticks "$GW_PID" >"$DIR/threads1"
put e2e_threads "$(threads_per_msg "$DIR/threads0" "$DIR/threads1" "$N_E2E")"

say "3b. naive pipeline: mosquitto_sub -q 1 | kcat -P, $N_E2E messages"
(
    mosquitto_sub -p "$MQ_PORT" -q 1 -i naive -t 'naive/#' -C "$N_E2E" |
        kcat -P -b "$BOOT" -t naive -X acks=all -X enable.idempotence=true -X linger.ms=5 \
            -X batch.num.messages=10000 -X queue.buffering.max.messages=1000000
    now_ms >"$R/naive_end_ms"
) &
NAIVE=$!
BG_PIDS+=("$NAIVE")
wait_connected naive
loadgen naive/dev "$N_E2E" naive
wait "$NAIVE" || die "naive pipeline failed"
put naive_rate "$(python3 -c "print(round($N_E2E * 1000 / ($(cat "$R/naive_end_ms") - $(jget "$R/loadgen_naive.json" start_unix_ms))))")"
NAIVE_COUNT=$(timeout 120 kcat -b "$BOOT" -C -e -q -t naive -o beginning -f '%o\n' | wc -l)
put naive_in_kafka "$((NAIVE_COUNT - 1))"

for rate in 1000 10000; do
    n=$((rate * LAT_SECS))
    say "4. latency at $rate msg/s: $n messages"
    "$LATENCY" --bootstrap "$BOOT" --topic bench --run-id "lat$rate" --messages "$n" --timeout $((LAT_SECS + 120)) \
        >"$R/latency_$rate.json" 2>"$DIR/latency_$rate.err" &
    LAT=$!
    BG_PIDS+=("$LAT")
    for _ in $(seq 1 200); do grep -q ready "$DIR/latency_$rate.err" && break; sleep 0.1; done
    grep -q ready "$DIR/latency_$rate.err" || die "latency consumer not ready: $(cat "$DIR/latency_$rate.err")"
    scrape
    C0=$(metric mkg_wal_records_committed_total)
    K0=$(metric mkg_wal_commits_total)
    S0=$(metric mkg_wal_syncs_total)
    W0=$(wbytes)
    commit_hist >"$DIR/commits0_$rate"
    loadgen load/lat "$n" "lat$rate" "$rate"
    wait "$LAT" || die "latency at $rate: $(cat "$DIR/latency_$rate.err")"
    wait_metric "m[\"mkg_backlog_records\"] == 0" 60 || true
    scrape
    put "wa_$rate" "$(python3 -c "print(round(($(wbytes) - $W0) / ($n * $SIZE), 2))")"
    put "batch_$rate" "$(python3 -c "print(round(($(metric mkg_wal_records_committed_total) - $C0) / max(1, $(metric mkg_wal_commits_total) - $K0), 1))")"
    put "commits_per_s_$rate" "$(python3 -c "print(round(($(metric mkg_wal_commits_total) - $K0) / $LAT_SECS))")"
    put "sync_batch_$rate" "$(python3 -c "print(round(($(metric mkg_wal_records_committed_total) - $C0) / max(1, $(metric mkg_wal_syncs_total) - $S0), 1))")"
    put "syncs_per_s_$rate" "$(python3 -c "print(round(($(metric mkg_wal_syncs_total) - $S0) / $LAT_SECS))")"
    commit_hist >"$DIR/commits1_$rate"
    put "commit_times_$rate" "$(commit_hist_diff "$DIR/commits0_$rate" "$DIR/commits1_$rate")"
done
gw_stop

# --- 2. drain vs kcat -P ------------------------------------------------------------
say "2a. kcat -P: $N_BACKLOG records from a file"
python3 - "$DIR/records.txt" "$N_BACKLOG" "$SIZE" "$PUBS" "$TOPICS" <<'EOF'
import sys
path, n, size, pubs, topics = sys.argv[1], *map(int, sys.argv[2:])
with open(path, "w") as f:
    for g in range(n):
        i, seq = g % pubs, g // pubs
        p = f"kcat-{i}:{seq}:0:"
        f.write(f"load/dev/{i}/{seq % topics}\t{p}{'x' * (size - len(p))}\n")
EOF
T0=$(now_ms)
KK0=$(cpu_ticks "$K_PID")
kcat -P -b "$BOOT" -t kcatref -K $'\t' -l -X acks=all -X enable.idempotence=true -X linger.ms=5 \
    -X batch.num.messages=10000 -X queue.buffering.max.messages=1000000 \
    -H mqtt.topic=load/dev/0/0 -H mqtt.qos=1 -H mqtt.retain=false \
    -H gateway.received_at_ms=1700000000000 -H gateway.id=bench-drain -H gateway.seq=1234567 \
    "$DIR/records.txt"
put kcat_rate "$(python3 -c "print(round($N_BACKLOG * 1000 / ($(now_ms) - $T0)))")"
put kcat_kafka_cpu_us "$(us_per_msg "$KK0" "$(cpu_ticks "$K_PID")" "$N_BACKLOG")"
# The same records through the gateway's own librdkafka (2.12; kcat links Debian's
# 2.0): what the client library alone reaches here (tests/src/bin/kprod.rs).
say "2a. kprod (kcat -P on the gateway's librdkafka): $N_BACKLOG records from a file"
"$KPROD" --bootstrap "$BOOT" --topic kprodref --file "$DIR/records.txt" \
    --header mqtt.topic=load/dev/0/0 --header mqtt.qos=1 --header mqtt.retain=false \
    --header gateway.received_at_ms=1700000000000 --header gateway.id=bench-drain \
    --header gateway.seq=1234567 >"$R/kprod.json" || die "kprod failed"
rm -f "$DIR/records.txt"

say "2b. gateway drain of a $N_BACKLOG-record backlog"
KD0=$(cpu_ticks "$K_PID")
gw_start drain "$DIR/wal-backlog" "$BOOT" bench 'load/#'
put ready_backlog_ms "$((GW_READY_MS - GW_EXEC_MS))"
wait_metric "m[\"mkg_backlog_records\"] == 0 && m[\"mkg_kafka_records_forwarded_total\"] >= $N_BACKLOG" 600 ||
    die "the gateway did not drain $N_BACKLOG records"
put drain_rate "$(python3 -c "print(round($N_BACKLOG * 1000 / ($DONE_MS - $GW_EXEC_MS)))")"
put drain_gw_cpu_us "$(us_per_msg 0 "$(cpu_ticks "$GW_PID")" "$N_BACKLOG")"
put drain_kafka_cpu_us "$(us_per_msg "$KD0" "$(cpu_ticks "$K_PID")" "$N_BACKLOG")"
thread_ticks "$GW_PID" >"$DIR/threads1"
awk '{ print $1, 0 }' "$DIR/threads1" >"$DIR/threads0"
put drain_threads "$(threads_per_msg "$DIR/threads0" "$DIR/threads1" "$N_BACKLOG")"
put rss_backlog_kb "$(hwm_kb)"
gw_stop
rm -rf "$DIR/wal-backlog"

# --- 7. start to ready with the big backlog; 5. RSS while it drains --------------------
say "7. start to ready with $N_BIG records; draining for $BIG_SECS s"
gw_start big "$DIR/wal-big" "$BOOT" big 'big/#'
put ready_big_ms "$((GW_READY_MS - GW_EXEC_MS))"
T0=$(now_ms)
sleep "$BIG_SECS"
scrape
put big_drain_rate "$(python3 -c "print(round($(metric mkg_kafka_records_forwarded_total) * 1000 / ($(now_ms) - $GW_EXEC_MS)))")"
put rss_big_kb "$(hwm_kb)"
gw_stop

# Nothing lost: every message of every run that went through the gateway into topic
# `bench` is there (distinct PUBID:SEQ per run; duplicates are allowed, counted).
say "checking topic bench with kcat"
timeout 600 kcat -b "$BOOT" -C -e -q -t bench -o beginning -f '%s\n' | cut -c1-40 |
    awk -F: 'NF >= 2 { id = $1 ":" $2; run = $1; sub(/-[0-9]+$/, "", run);
             if (!(id in seen)) { seen[id] = 1; d[run]++ } else dup[run]++ }
             END { for (r in d) printf "%s %d %d\n", r, d[r], dup[r] + 0 }' | sort >"$DIR/kafka_check"
check_run() {
    local got
    got=$(awk -v r="$1" '$1 == r { print $2 }' "$DIR/kafka_check")
    [[ ${got:-0} -eq $2 ]] || die "topic bench holds ${got:-0} distinct messages of run $1, expected $2"
}
check_run e2e "$N_E2E"
check_run lat1000 $((1000 * LAT_SECS))
check_run lat10000 $((10000 * LAT_SECS))
check_run backlog "$N_BACKLOG"
put kafka_check "$(awk '{ printf "%s %d distinct + %d dup, ", $1, $2, $3 }' "$DIR/kafka_check" | sed 's/, $//')"
put mq_drop_lines "$(mq_drops)"
put wall_s "$((($(now_ms) - T_START) / 1000))"
put busy_pct "$(python3 -c "
hz = $(getconf CLK_TCK); idle = ($(idle_ticks) - $IDLE_START) / hz
wall = ($(now_ms) - $T_START) / 1000
print(round(100 * (1 - idle / (wall * $(nproc)))))")"
put other_load "$(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$R" "${BENCH_RESULTS:-}" <<'EOF'
import json, os, sys
R, out = sys.argv[1], sys.argv[2]
r = {}
for k in os.listdir(R):
    v = open(os.path.join(R, k)).read().strip()
    if k.endswith(".json"):
        try:
            r[k[:-5]] = json.loads(v.splitlines()[-1])
        except Exception:
            r[k[:-5]] = v
        continue
    try:
        r[k] = int(v)
    except ValueError:
        try:
            r[k] = float(v)
        except ValueError:
            r[k] = v
mib = lambda kb: kb / 1024
rows = []
def row(n, what, fig, ceil, ratio, target, ok):
    rows.append((n, what, fig, ceil, ratio, target, "pass" if ok else "MISS"))
ir, cr = r["ingest_rate"], r["ceiling_rate"]
best = "mosquitto_sub -q 1" if r["ceiling_c_rate"] >= r["ceiling_rust_rate"] else "rumqttc subscriber"
row(1, "durable ingest, Kafka stopped", f"{ir:,} msg/s", f"{cr:,} msg/s ({best})", f"{ir/cr:.2f}", ">= 0.9", ir >= 0.9 * cr)
dr, kr = r["drain_rate"], r["kcat_rate"]
kp = r["kprod"]["rate"]
row(2, f"drain of {r['walfill_backlog']['records']:,} records", f"{dr:,} msg/s", f"{kr:,} msg/s (kcat -P)", f"{dr/kr:.2f}", ">= 0.8", dr >= 0.8 * kr)
er, nr = r["e2e_rate"], r["naive_rate"]
row(3, "end to end, durable", f"{er:,} msg/s", f"{nr:,} msg/s (mosquitto_sub \\| kcat -P)", f"{er/nr:.2f}", ">= 1.0", er >= nr)
for rate in (1000, 10000):
    l = r[f"latency_{rate}"]
    ok = l["p99_ms"] <= 20 if rate == 1000 else True
    row(4, f"latency at {rate:,}/s p50 / p99 / p99.9", f"{l['p50_ms']} / {l['p99_ms']} / {l['p999_ms']} ms", "-", "-", "p99 <= 20 ms" if rate == 1000 else "-", ok)
row(5, "RSS idle", f"{mib(r['rss_idle_kb']):.1f} MiB", "-", "-", "-", True)
row(5, "RSS peak under full load (3)", f"{mib(r['rss_load_kb']):.1f} MiB", "-", "-", "<= 60 MB", r["rss_load_kb"] * 1024 <= 60e6)
b1, b2 = r["rss_backlog_kb"], r["rss_big_kb"]
row(5, f"RSS peak draining {r['walfill_backlog']['records']:,} backlog", f"{mib(b1):.1f} MiB", "-", "-", "-", True)
row(5, f"RSS peak with {r['walfill_big']['records']:,} backlog (first {r.get('big_secs', '')}s)".replace(" (first s)", " (start + drain)"), f"{mib(b2):.1f} MiB", f"{mib(b1):.1f} MiB (smaller backlog)", f"{b2/b1:.2f}", "no growth (<= 1.1)", b2 <= 1.1 * b1)
row(6, "disk bytes / payload byte at 1,000/s", f"{r['wa_1000']}", "-", "-", "<= 3", r["wa_1000"] <= 3)
row(6, "disk bytes / payload byte at full speed (3)", f"{r['wa_full']}", "-", "-", "-", True)
row(7, f"start to ready, {r['walfill_big']['records']:,} backlog", f"{r['ready_big_ms']} ms", f"{r['ready_backlog_ms']} ms ({r['walfill_backlog']['records']:,} backlog)", "-", "<= 1 s", r["ready_big_ms"] <= 1000)
row(8, "release binary, stripped", f"{r['bin_stripped_bytes']/2**20:.1f} MiB ({r['bin_stripped_bytes']:,} B)", "-", "-", "-", True)
print()
print("| # | measurement | figure | ceiling | ratio | target | result |")
print("|---|---|---|---|---|---|---|")
for x in rows:
    print("| " + " | ".join(str(c) for c in x) + " |")
print()
lat = lambda k: r[k]
print(f"run: {r['mode']}, git {r['git']}, {r['wall_s']} s, machine busy {r['busy_pct']}% "
      f"(load avg {r['other_load']}), 4 KiB write+fdatasync {r['fsync_us']} us, "
      f"Mosquitto drop log lines {r['mq_drop_lines']}")
print(f"details: publishers' ack rate in 1a {r['ceiling_pub_rate']:,} msg/s, in 3 {r['e2e_ingest_rate']:,} msg/s; "
      f"records per WAL commit: full speed {r['e2e_batch']}, 1,000/s {r['batch_1000']} "
      f"({r['commits_per_s_1000']} commits/s), 10,000/s {r['batch_10000']}; records per fsync: 1,000/s {r['sync_batch_1000']} "
      f"({r['syncs_per_s_1000']} fsyncs/s), 10,000/s {r['sync_batch_10000']}; disk bytes/payload byte at 10,000/s {r['wa_10000']}; "
      f"gateway CPU {r['e2e_gw_cpu_us']} us/msg at full speed; naive pipeline delivered {r['naive_in_kafka']:,} records; "
      f"drain rate over the first seconds of the big backlog {r['big_drain_rate']:,} msg/s; "
      f"binary before strip {r['bin_bytes']:,} B")
print(f"ceilings in 2: kcat -P (librdkafka 2.0) {r['kcat_rate']:,} msg/s; kprod, the same on the gateway's librdkafka 2.12, "
      f"{kp:,} msg/s: drain / kprod {r['drain_rate'] / kp:.2f}")
print(f"ceilings in 1: mosquitto_sub -q 1 {r['ceiling_c_rate']:,} msg/s, rumqttc subscriber (mqttsub) {r['ceiling_rust_rate']:,} msg/s")
print(f"CPU us/msg in 1: ceiling (mosquitto_sub run): Mosquitto {r['ceiling_mq_cpu_us']}, mosquitto_sub {r['ceiling_sub_cpu_us']}; "
      f"ingest: Mosquitto {r['ingest_mq_cpu_us']}, gateway {r['ingest_gw_cpu_us']} ({r['ingest_threads']})")
print(f"CPU us/msg in 2: gateway {r['drain_gw_cpu_us']} (whole process incl. start: {r['drain_threads']}), "
      f"Kafka {r['drain_kafka_cpu_us']} (gateway) vs {r['kcat_kafka_cpu_us']} (kcat)")
print(f"CPU us/msg at full speed (3): gateway {r['e2e_gw_cpu_us']} ({r['e2e_threads']}), "
      f"Mosquitto {r['e2e_mq_cpu_us']}, Kafka {r['e2e_kafka_cpu_us']}")
for rate in (1000, 10000):
    l = r[f"latency_{rate}"]
    print(f"latency at {rate:,}/s: publish -> gateway receive p50 {l['to_gateway_p50_ms']} ms, p99 {l['to_gateway_p99_ms']} ms; "
          f"p90 {l['p90_ms']} ms, max {l['max_ms']} ms, {l['received']:,} received, {l['duplicates']} duplicates")
for rate in (1000, 10000):
    print(f"WAL fsync times at {rate:,}/s: {r[f'commit_times_{rate}']}")
print(f"disk bytes written per WAL fsync at 1,000/s: {r['wa_1000'] * 256 * r['sync_batch_1000']:,.0f} "
      f"(bytes/payload byte x 256 x records/fsync)")
print(f"Kafka check (topic bench, per run): {r['kafka_check']}")
if out:
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
EOF
