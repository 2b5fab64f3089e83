#!/usr/bin/env bash
# Run the gateway end to end on this machine: a local Mosquitto, a local Kafka 4.1.1
# (KRaft), the gateway (release build) with its WAL under demo-data/, then publish
# messages with mosquitto_pub and read them back from Kafka with kcat.
#
#   scripts/demo.sh            run the demo, then stop everything
#   scripts/demo.sh --keep     leave Mosquitto, Kafka and the gateway running
#
# Ports (override with env): MQTT_PORT=1883 KAFKA_PORT=9092 ADMIN_PORT=9080
# Messages: DEMO_MESSAGES=3000
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd -P)"
export PATH="$HOME/.cargo/bin:$PATH"

KEEP=0
[[ ${1:-} == --keep ]] && KEEP=1
MQTT_PORT="${MQTT_PORT:-1883}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
ADMIN_PORT="${ADMIN_PORT:-9080}"
N="${DEMO_MESSAGES:-3000}"
DATA="$ROOT/demo-data"
TOPIC="demo"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing what is missing (Mosquitto, Kafka jars, build tools)"
bash scripts/install-deps.sh >/dev/null

say "building the gateway (release)"
cargo build --release --locked -p mqtt-kafka-gateway
BIN="$ROOT/target/release/mqtt-kafka-gateway"

GW_PID=""
cleanup() {
    if [[ $KEEP -eq 1 ]]; then return; fi
    say "stopping"
    [[ -n $GW_PID ]] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    bash scripts/kafka-local.sh stop "$DATA/kafka" || true
    bash scripts/mosquitto-local.sh stop "$DATA/mosquitto" || true
}
trap cleanup EXIT

mkdir -p "$DATA"
say "starting Mosquitto on 127.0.0.1:$MQTT_PORT and Kafka on 127.0.0.1:$KAFKA_PORT"
bash scripts/mosquitto-local.sh stop "$DATA/mosquitto" >/dev/null 2>&1 || true
bash scripts/kafka-local.sh stop "$DATA/kafka" >/dev/null 2>&1 || true
bash scripts/mosquitto-local.sh start "$DATA/mosquitto" "$MQTT_PORT"
bash scripts/kafka-local.sh start "$DATA/kafka" "$KAFKA_PORT" "$CONTROLLER_PORT"

cat >"$DATA/gateway.toml" <<EOF
gateway_id = "demo-gateway"
[mqtt]
server_uris = ["tcp://127.0.0.1:$MQTT_PORT"]
client_id = "mqtt-kafka-gateway-demo"
topics = [{ filter = "demo/#", qos = 1 }]
[kafka]
bootstrap_servers = "127.0.0.1:$KAFKA_PORT"
topic = "$TOPIC"
[wal]
dir = "$DATA/wal"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
EOF
say "checking the configuration"
"$BIN" check-config --config "$DATA/gateway.toml"

say "starting the gateway (log: $DATA/gateway.log)"
"$BIN" run --config "$DATA/gateway.toml" >"$DATA/gateway.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || { cat "$DATA/gateway.log"; exit 1; }
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz"; echo

say "publishing $N QoS 1 messages to demo/sensor-{1,2,3} with mosquitto_pub"
for s in 1 2 3; do
    seq 1 $((N / 3)) | sed "s/^/{\"sensor\":$s,\"n\":/; s/\$/}/" |
        mosquitto_pub -p "$MQTT_PORT" -q 1 -t "demo/sensor-$s" -l &
done
wait %2 %3 %4 2>/dev/null || wait

say "waiting until the WAL backlog has drained to Kafka"
for _ in $(seq 1 600); do
    records="$(curl -fs "http://127.0.0.1:$ADMIN_PORT/backlog" | sed 's/.*"records":\([0-9]*\).*/\1/')"
    fwd="$(curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^mkg_kafka_records_forwarded_total/ {print $2}')"
    [[ $records == 0 && ${fwd:-0} -ge $((N / 3 * 3)) ]] && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/backlog"; echo

say "reading topic '$TOPIC' back from Kafka with kcat"
count="$(kcat -b "127.0.0.1:$KAFKA_PORT" -C -t "$TOPIC" -e -q -f '%s\n' | wc -l)"
echo "records in Kafka topic '$TOPIC': $count (published: $((N / 3 * 3)))"
echo "first record, with key and headers:"
kcat -b "127.0.0.1:$KAFKA_PORT" -C -t "$TOPIC" -o beginning -c 1 -e -q \
    -f 'partition %p offset %o\n  key: %k\n  headers: %h\n  value: %s\n'

say "metrics excerpt"
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^mkg_(mqtt_messages|wal_records|kafka_records|backlog)'

if [[ $count -lt $((N / 3 * 3)) ]]; then
    echo "FAILED: fewer records in Kafka than published" >&2
    exit 1
fi
if [[ $KEEP -eq 1 ]]; then
    say "left running (--keep): gateway pid $GW_PID, admin http://127.0.0.1:$ADMIN_PORT"
    echo "stop with: kill $GW_PID; scripts/kafka-local.sh stop $DATA/kafka; scripts/mosquitto-local.sh stop $DATA/mosquitto"
fi
say "demo OK"
