#!/usr/bin/env bash
# End-to-end throughput benchmark: loadgen -> Mosquitto -> gateway (WAL) -> Kafka.
#
#   scripts/bench-e2e.sh
#
# Starts a throwaway Mosquitto and Kafka (scripts/mosquitto-local.sh,
# scripts/kafka-local.sh) on free loopback ports in a temp dir, the release gateway
# with its WAL in that dir, warms everything up (creates the Kafka topic through
# auto-create), then runs `loadgen` (tests/src/bin/loadgen.rs) and measures:
#
#   ingest   messages/s acknowledged by Mosquitto to the publishers (QoS 1 PUBACK)
#   e2e      messages/s from the first PUBLISH until the gateway has committed all N
#            to its WAL and Kafka acknowledged all of them (mkg_wal_records_committed
#            covers N and mkg_backlog_records is 0; /metrics polled every 100 ms)
#   steady   forwarding rate between 20% and 80% of N (no start/tail effects)
#   errors   producer rebuilds, delivery errors, MQTT reconnects during the load
#   RSS      gateway peak RSS (VmHWM), CPU seconds of each process, per gateway thread
#   batch    WAL records per commit (mkg_wal_records_committed / mkg_wal_commits)
#
# and checks with kcat that Kafka holds at least warm-up + N records and all N distinct
# messages of the run (by the payload's PUBID:SEQ prefix).
#
# Default is 1M messages as fast as Mosquitto takes them (~25-40 s here). Longer
# unpaced runs overflow Mosquitto 2.0.11's queue for the gateway (max_queued_messages)
# and it drops messages itself (see docs/PERFORMANCE.md); use BENCH_RATE for those.
#
# Environment (all optional):
#   BENCH_MESSAGES=1000000  BENCH_PUBLISHERS=4  BENCH_SIZE=256  BENCH_QOS=1
#   BENCH_RATE=0            total offered rate, msg/s (0 = as fast as Mosquitto acks)
#   BENCH_INFLIGHT=1000     loadgen in-flight window per connection
#   BENCH_TOPICS=8          topics per publisher (load/dev/I/T)
#   BENCH_WARMUP=2000       warm-up messages (not measured)
#   BENCH_DIR=...           work dir (default: mktemp -d); WAL goes in $BENCH_DIR/wal
#   BENCH_WAL_DIR=...       put the WAL somewhere else (another disk)
#   BENCH_GATEWAY_TOML=...  extra TOML appended to the gateway config's [wal] table
#                           (e.g. 'commit_linger = "1ms"')
#   BENCH_GATEWAY_EXTRA=... extra TOML appended at the end of the gateway config, e.g.
#                           $'[kafka.properties]\n"linger.ms" = "20"'
#   BENCH_NO_BUILD=1        skip cargo build
#   BENCH_KEEP=1            keep the work dir (logs, metrics time series)
#   BENCH_RESULTS=FILE      append the results as one JSON line to FILE
#   BENCH_TIMEOUT=900       seconds to wait for forwarding to finish
#   BENCH_STALL=60          give up when nothing is forwarded for this many seconds
#   CARGO_TARGET_DIR        where the release binaries are built (default target/)
#   MKG_KAFKA_JVM_OPTS      passed to scripts/kafka-local.sh (broker heap/GC/JIT)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
export PATH="$HOME/.cargo/bin:$PATH"

N="${BENCH_MESSAGES:-1000000}"
PUBS="${BENCH_PUBLISHERS:-4}"
SIZE="${BENCH_SIZE:-256}"
QOS="${BENCH_QOS:-1}"
INFLIGHT="${BENCH_INFLIGHT:-1000}"
RATE="${BENCH_RATE:-0}"
TOPICS="${BENCH_TOPICS:-8}"
WARMUP="${BENCH_WARMUP:-2000}"
TIMEOUT="${BENCH_TIMEOUT:-900}"
STALL="${BENCH_STALL:-60}"
TOPIC="bench"

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "bench-e2e: ERROR: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

for tool in curl kcat mosquitto java python3; do
    command -v "$tool" >/dev/null || die "$tool not found (scripts/install-deps.sh installs the brokers and kcat)"
done

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    say "building (release)"
    # Two invocations on purpose: built together, cargo would unify features and
    # compile the shipped binary with mkg-e2e's test-only `failpoints` feature.
    cargo build --release --locked -p mqtt-kafka-gateway --bins
    cargo build --release --locked -p mkg-e2e --bin loadgen
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
GW_BIN="$TARGET/release/mqtt-kafka-gateway"
LOADGEN="$TARGET/release/loadgen"
[[ -x $GW_BIN && -x $LOADGEN ]] || die "missing $GW_BIN or $LOADGEN (build first)"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
MQ_PORT="$(free_port)"
K_PORT="$(free_port)"
KC_PORT="$(free_port)"
A_PORT="$(free_port)"
while [[ $K_PORT == "$MQ_PORT" ]]; do K_PORT="$(free_port)"; done
while [[ $KC_PORT == "$K_PORT" || $KC_PORT == "$MQ_PORT" ]]; do KC_PORT="$(free_port)"; done
while [[ $A_PORT == "$KC_PORT" || $A_PORT == "$K_PORT" || $A_PORT == "$MQ_PORT" ]]; do A_PORT="$(free_port)"; done

DIR="${BENCH_DIR:-$(mktemp -d /tmp/mkg-bench.XXXXXX)}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
WAL_DIR="${BENCH_WAL_DIR:-$DIR/wal}"
GW_PID=""
LG_PID=""
SYS_PID=""
cleanup() {
    local rc=$?
    [[ -n $SYS_PID ]] && kill "$SYS_PID" 2>/dev/null || true
    [[ -n $LG_PID ]] && kill -TERM "$LG_PID" 2>/dev/null || true
    if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
    bash "$ROOT/scripts/kafka-local.sh" stop "$DIR/kafka" >/dev/null 2>&1 || true
    bash "$ROOT/scripts/mosquitto-local.sh" stop "$DIR/mosquitto" >/dev/null 2>&1 || true
    if [[ ${BENCH_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "bench-e2e: work dir kept: $DIR" >&2
    else
        rm -rf "$DIR"
        if [[ -n ${BENCH_WAL_DIR:-} ]]; then rm -f "$WAL_DIR/wal.redb"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "work dir $DIR"
# Disk probe: latency of one 4 KiB write + fdatasync where the WAL lives.
mkdir -p "$WAL_DIR"
FSYNC_US="$(dd if=/dev/zero of="$WAL_DIR/.fsync-probe" bs=4k count=500 oflag=dsync 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) t = $(i-1); print int(t * 1e6 / 500) }')"
rm -f "$WAL_DIR/.fsync-probe"
say "disk: 4 KiB write+fdatasync ~ ${FSYNC_US} us"

say "starting Mosquitto (:$MQ_PORT) and Kafka (:$K_PORT)"
bash scripts/mosquitto-local.sh start "$DIR/mosquitto" "$MQ_PORT"
bash scripts/kafka-local.sh start "$DIR/kafka" "$K_PORT" "$KC_PORT"
MQ_PID="$(cat "$DIR/mosquitto/mosquitto.pid")"
K_PID="$(cat "$DIR/kafka/kafka.pid")"

cat >"$DIR/gateway.toml" <<EOF
gateway_id = "bench"
log = "info"
[mqtt]
server_uris = ["tcp://127.0.0.1:$MQ_PORT"]
client_id = "mkg-bench"
clean_session = false
topics = [{ filter = "load/#", qos = 1 }]
[kafka]
bootstrap_servers = "127.0.0.1:$K_PORT"
topic = "$TOPIC"
[wal]
dir = "$WAL_DIR"
${BENCH_GATEWAY_TOML:-}
[admin]
listen = "127.0.0.1:$A_PORT"
${BENCH_GATEWAY_EXTRA:-}
EOF
"$GW_BIN" check-config --config "$DIR/gateway.toml" >/dev/null

say "starting the gateway (log $DIR/gateway.log)"
"$GW_BIN" run --config "$DIR/gateway.toml" >"$DIR/gateway.log" 2>&1 &
GW_PID=$!
ADMIN="http://127.0.0.1:$A_PORT"
for _ in $(seq 1 300); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz" 2>/dev/null)" == 200 ]] && break
    kill -0 "$GW_PID" 2>/dev/null || { tail -20 "$DIR/gateway.log" >&2; die "gateway exited"; }
    sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' "$ADMIN/readyz")" == 200 ]] || die "gateway not ready after 30s"

# metric NAME -> value (0 if absent), from one /metrics scrape in $METRICS.
metric() { awk -v n="$1" '$1 == n { printf "%d\n", $2; f = 1 } END { if (!f) print 0 }' <<<"$METRICS"; }
scrape() { METRICS="$(curl -fsS --max-time 2 "$ADMIN/metrics")" || METRICS=""; }

# Wait until the WAL has committed >= $1 appends and its backlog is empty, i.e.
# Kafka acknowledged every one of them (or stall / timeout); sets DONE_MS.
# (mkg_kafka_records_forwarded_total alone is not enough: records replayed after a
# producer rebuild are counted again.)
wait_forwarded() {
    local target=$1 series=${2:-/dev/null} deadline=$(($(now_ms) + TIMEOUT * 1000))
    local last_fwd=-1 last_change
    last_change=$(now_ms)
    while :; do
        scrape
        local t fwd
        t=$(now_ms)
        fwd=$(metric mkg_kafka_records_forwarded_total)
        if [[ $series != /dev/null ]]; then
            printf '%s %s %s %s %s\n' "$t" "$(metric mkg_mqtt_messages_received_total)" \
                "$(metric mkg_wal_records_committed_total)" "$fwd" "$(metric mkg_wal_commits_total)" >>"$series"
        fi
        if ((fwd >= target && $(metric mkg_wal_records_committed_total) >= target &&
            $(metric mkg_backlog_records) == 0)); then
            DONE_MS=$t
            return 0
        fi
        if ((fwd != last_fwd)); then
            last_fwd=$fwd
            last_change=$t
        elif ((t - last_change > STALL * 1000)); then
            echo "bench-e2e: nothing forwarded for ${STALL}s at $fwd of $target" >&2
            return 1
        fi
        ((t > deadline)) && { echo "bench-e2e: timed out at $fwd of $target" >&2; return 1; }
        kill -0 "$GW_PID" 2>/dev/null || { tail -20 "$DIR/gateway.log" >&2; die "gateway exited"; }
        sleep 0.1
    done
}

say "warm-up: $WARMUP messages (auto-creates Kafka topic $TOPIC)"
"$LOADGEN" --port "$MQ_PORT" --publishers 2 --messages "$WARMUP" --size "$SIZE" --qos "$QOS" \
    --topic-prefix load/warmup --topics 2 --run-id warmup >"$DIR/warmup.json" 2>"$DIR/warmup.err" ||
    { cat "$DIR/warmup.err" >&2; die "warm-up loadgen failed"; }
wait_forwarded "$WARMUP" || die "warm-up messages did not reach Kafka"
sleep 1

# CPU ticks: process (utime+stime) and per gateway thread.
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
thread_ticks() {
    local f
    for f in /proc/"$1"/task/*/stat; do
        awk '{ line = $0; comm = line; sub(/^[^(]*\(/, "", comm); sub(/\).*$/, "", comm);
               gsub(/ /, "_", comm); sub(/.*\) /, "", line); split(line, a, " ");
               print comm, a[12] + a[13] }' "$f" 2>/dev/null || true
    done | awk '{ s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}
idle_ticks() { awk '/^cpu / { print $5 + $6; exit }' /proc/stat; }
busy_ticks() { awk '/^cpu / { b = 0; for (i = 2; i <= 9; i++) if (i != 5 && i != 6) b += $i; print b; exit }' /proc/stat; }
HZ="$(getconf CLK_TCK)"

scrape
FWD0=$(metric mkg_kafka_records_forwarded_total)
REBUILDS0=$(metric mkg_kafka_producer_rebuilds_total)
DERR0=$(metric mkg_kafka_delivery_errors_total)
RECON0=$(metric mkg_mqtt_reconnects_total)
COMMITS0=$(metric mkg_wal_commits_total)
RECS0=$(metric mkg_wal_records_committed_total)
GW_T0=$(proc_ticks "$GW_PID")
MQ_T0=$(proc_ticks "$MQ_PID")
K_T0=$(proc_ticks "$K_PID")
IDLE0=$(idle_ticks)
BUSY0=$(busy_ticks)
thread_ticks "$GW_PID" >"$DIR/threads0"
SERIES="$DIR/metrics.series"
: >"$SERIES"

say "load: $PUBS publishers x $((N / PUBS)) messages, $SIZE bytes, QoS $QOS, inflight $INFLIGHT, rate ${RATE/#0/unlimited}"
# Mosquitto's own counters ($SYS, refreshed every 10 s) while the load runs.
(
    while :; do
        echo "# $(now_ms)"
        timeout 3 mosquitto_sub -p "$MQ_PORT" -v -W 1 -t '$SYS/broker/store/messages/count' \
            -t '$SYS/broker/publish/messages/dropped' -t '$SYS/broker/messages/received' \
            -t '$SYS/broker/messages/sent' 2>/dev/null || true
        sleep 10
    done
) >"$DIR/mosquitto-sys.log" 2>&1 &
SYS_PID=$!
WALL0=$(now_ms)
(
    TIMEFORMAT='%U %S'
    { time "$LOADGEN" --port "$MQ_PORT" --publishers "$PUBS" --messages "$N" --size "$SIZE" \
        --qos "$QOS" --topic-prefix load/dev --topics "$TOPICS" --inflight "$INFLIGHT" \
        --rate "$RATE" --run-id "run$$" >"$DIR/loadgen.json" 2>"$DIR/loadgen.err"; } 2>"$DIR/loadgen.time"
) &
LG_PID=$!
RC=0
wait_forwarded $((RECS0 + N)) "$SERIES" || RC=$?
GW_T1=$(proc_ticks "$GW_PID")
MQ_T1=$(proc_ticks "$MQ_PID")
K_T1=$(proc_ticks "$K_PID")
IDLE1=$(idle_ticks)
BUSY1=$(busy_ticks)
thread_ticks "$GW_PID" >"$DIR/threads1"
kill "$SYS_PID" 2>/dev/null || true
SYS_PID=""
MQ_DROPS="$(grep -c 'Outgoing messages are being dropped' "$DIR/mosquitto/mosquitto.log" || true)"
((MQ_DROPS == 0)) || echo "bench-e2e: WARNING: Mosquitto logged 'Outgoing messages are being dropped' (see $DIR/mosquitto/mosquitto.log, $DIR/mosquitto-sys.log)" >&2
LG_RC=0
wait "$LG_PID" || LG_RC=$?
LG_PID=""
cat "$DIR/loadgen.err" >&2
[[ $LG_RC -eq 0 ]] || die "loadgen failed (exit $LG_RC): $(cat "$DIR/loadgen.json")"
[[ $RC -eq 0 ]] || die "the gateway did not forward all $N messages (see $DIR)"

LG_JSON="$(cat "$DIR/loadgen.json")"
jget() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$LG_JSON" "$1"; }
START_MS=$(jget start_unix_ms)
INGEST_RATE=$(jget acked_rate)
INGEST_SECS=$(jget acked_secs)

scrape
COMMITS=$(($(metric mkg_wal_commits_total) - COMMITS0))
FWD=$(($(metric mkg_kafka_records_forwarded_total) - FWD0))
REBUILDS=$(($(metric mkg_kafka_producer_rebuilds_total) - REBUILDS0))
DERR=$(($(metric mkg_kafka_delivery_errors_total) - DERR0))
RECON=$(($(metric mkg_mqtt_reconnects_total) - RECON0))
RECS=$(($(metric mkg_wal_records_committed_total) - RECS0))
E2E_MS=$((DONE_MS - START_MS))
HWM_KB=$(awk '/VmHWM/ { print $2 }' "/proc/$GW_PID/status")
RSS_KB=$(awk '/VmRSS/ { print $2 }' "/proc/$GW_PID/status")
read -r LG_U LG_S <"$DIR/loadgen.time" || { LG_U=0; LG_S=0; }

# Steady forwarding rate: between 20% and 80% of N in the time series.
STEADY=$(awk -v f0="$RECS0" -v n="$N" '
    { t = $1; f = ($3 < $4 ? $3 : $4) - f0 }
    !a && f >= 0.2 * n { a = 1; ta = t; fa = f }
    a && !b && f >= 0.8 * n { b = 1; tb = t; fb = f }
    END { if (b && tb > ta) printf "%d\n", (fb - fa) * 1000 / (tb - ta); else print 0 }' "$SERIES")

say "checking Kafka with kcat"
KAFKA_COUNT=$(timeout 300 kcat -b "127.0.0.1:$K_PORT" -C -e -q -t "$TOPIC" -o beginning -f '%o\n' | wc -l)
# Distinct messages of this run (payload "run$$-I:SEQ:..."): duplicates cannot hide a loss.
KAFKA_DISTINCT=$(timeout 300 kcat -b "127.0.0.1:$K_PORT" -C -e -q -t "$TOPIC" -o beginning -f '%s\n' |
    cut -c1-48 | cut -d: -f1,2 | grep "^run$$-" | sort -u | wc -l)
KAFKA_OK=yes
((KAFKA_COUNT >= WARMUP + N && KAFKA_DISTINCT == N)) || KAFKA_OK=no

python3 - "$DIR" <<EOF
import json, sys
hz = $HZ
e2e_s = $E2E_MS / 1000
busy = 1 - ($IDLE1 - $IDLE0) / hz / (e2e_s * $(nproc)) if e2e_s > 0 else 0
r = {
    "git": "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- gateway wal admin 2>/dev/null || echo -dirty)",
    "offered_rate": $RATE, "mosquitto_drop_log_lines": $MQ_DROPS,
    "messages": $N, "publishers": $PUBS, "size": $SIZE, "qos": $QOS, "inflight": $INFLIGHT,
    "ingest_rate": $INGEST_RATE, "ingest_secs": $INGEST_SECS,
    "e2e_secs": round(e2e_s, 3), "e2e_rate": round($N / e2e_s) if e2e_s else 0,
    "steady_forward_rate": $STEADY,
    "gateway_peak_rss_mib": round($HWM_KB / 1024, 1), "gateway_rss_end_mib": round($RSS_KB / 1024, 1),
    "gateway_cpu_s": round(($GW_T1 - $GW_T0) / hz, 2),
    "mosquitto_cpu_s": round(($MQ_T1 - $MQ_T0) / hz, 2),
    "kafka_cpu_s": round(($K_T1 - $K_T0) / hz, 2),
    "loadgen_cpu_s": round($LG_U + $LG_S, 2),
    "machine_busy_pct": round(100 * busy, 1),
    "other_cpu_s": round(($BUSY1 - $BUSY0) / hz - ($GW_T1 - $GW_T0 + $MQ_T1 - $MQ_T0 + $K_T1 - $K_T0) / hz - ($LG_U + $LG_S), 2),
    "wal_commits": $COMMITS, "wal_records": $RECS, "forwarded": $FWD,
    "producer_rebuilds": $REBUILDS, "delivery_errors": $DERR, "mqtt_reconnects": $RECON,
    "avg_records_per_commit": round($RECS / $COMMITS, 1) if $COMMITS else 0,
    "disk_fsync_us": ${FSYNC_US:-0},
    "kafka_records": $KAFKA_COUNT, "kafka_expected_min": $WARMUP + $N, "kafka_ok": "$KAFKA_OK" == "yes",
    "kafka_duplicates": max(0, $KAFKA_COUNT - ($WARMUP + $N)), "kafka_distinct": $KAFKA_DISTINCT,
}
t0 = dict(l.split() for l in open("$DIR/threads0"))
t1 = dict(l.split() for l in open("$DIR/threads1"))
threads = {k: round((int(v) - int(t0.get(k, 0))) / hz, 2) for k, v in t1.items()}
r["gateway_thread_cpu_s"] = {k: v for k, v in sorted(threads.items(), key=lambda x: -x[1]) if v > 0}
print()
print("| metric | value |")
print("|---|---|")
rows = [
    ("messages x size, QoS", f"{r['messages']:,} x {r['size']} B, QoS {r['qos']} ({r['publishers']} publishers, inflight {r['inflight']}, offered {'unlimited' if not r['offered_rate'] else format(r['offered_rate'], ',') + ' msg/s'})"),
    ("MQTT ingest (PUBACKs at publishers)", f"{r['ingest_rate']:,.0f} msg/s ({r['ingest_secs']} s)"),
    ("end to end (first publish -> all forwarded)", f"{r['e2e_rate']:,} msg/s ({r['e2e_secs']} s)"),
    ("steady forwarding (20%..80% of N)", f"{r['steady_forward_rate']:,} msg/s"),
    ("gateway peak RSS (VmHWM)", f"{r['gateway_peak_rss_mib']} MiB"),
    ("gateway CPU", f"{r['gateway_cpu_s']} s ({100 * r['gateway_cpu_s'] / e2e_s:.0f}% of one core)"),
    ("mosquitto / kafka / loadgen CPU", f"{r['mosquitto_cpu_s']} s / {r['kafka_cpu_s']} s / {r['loadgen_cpu_s']} s"),
    ("machine busy ($(nproc) cores) / CPU of other processes", f"{r['machine_busy_pct']}% / {r['other_cpu_s']} s"),
    ("WAL commits / records per commit", f"{r['wal_commits']:,} / {r['avg_records_per_commit']}"),
    ("disk 4 KiB write+fdatasync", f"{r['disk_fsync_us']} us"),
    ("producer rebuilds / delivery errors / MQTT reconnects", f"{r['producer_rebuilds']} / {r['delivery_errors']} / {r['mqtt_reconnects']}"),
    ("records in Kafka (kcat)", f"{r['kafka_records']:,} (need >= {r['kafka_expected_min']:,}), distinct of this run {r['kafka_distinct']:,} of {r['messages']:,}: {'OK' if r['kafka_ok'] else 'MISSING'}; {r['kafka_duplicates']:,} extra (duplicates)"),
]
for k, v in rows:
    print(f"| {k} | {v} |")
print()
print("gateway CPU seconds by thread:", ", ".join(f"{k} {v}" for k, v in r["gateway_thread_cpu_s"].items()))
out = "${BENCH_RESULTS:-}"
if out:
    with open(out, "a") as f:
        f.write(json.dumps(r) + "\n")
EOF
[[ $KAFKA_OK == yes ]] || die "Kafka holds $KAFKA_COUNT records ($KAFKA_DISTINCT distinct of this run), expected at least $((WARMUP + N)) ($N distinct)"
if ((KAFKA_COUNT > WARMUP + N || REBUILDS > 0)); then
    echo "bench-e2e: note: $((KAFKA_COUNT - WARMUP - N)) duplicate records in Kafka, $REBUILDS producer rebuilds (see $DIR/gateway.log)" >&2
    BENCH_KEEP=1
fi
