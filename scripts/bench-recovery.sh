#!/usr/bin/env bash
# Recovery-time benchmark: how long rmq-node takes to serve again after an unclean stop with a
# large log on disk.
#
# Starts target/release/rmq-node on free loopback ports, fills one partition (a topic with
# segment.bytes = SEGMENT_BYTES) with TARGET_GIB GiB of 1 KiB records (rmq-bench produce, max rate,
# acks=1), kill -9s the broker while that producer is still writing, then restarts it on the
# same data dir REPEAT times (kill -9 after each) and reports for each restart:
#   ready_ms   exec -> the "rmq-node ready" line (every log opened and recovered)
#   serve_ms   exec -> a Fetch of the partition's last record answered (kcat -o -1)
# Issue 6 aim: 10 GiB in 1,000 segments serves within 3 s.
#
# Environment:
#   TARGET_GIB (default 10)  SEGMENT_BYTES (default 10485760 = 10 MiB -> 1,000 segments)
#   REPEAT (default 3)  CORES (default 2)  NO_BUILD=1  RMQ_NODE
#   DATA_ROOT (default /var/tmp; must not be tmpfs)  KEEP_DATA=1 keeps the data dir
set -euo pipefail
command -v kcat >/dev/null || { echo "needs kcat (scripts/install-test-deps.sh installs it)" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_GIB="${TARGET_GIB:-10}"
SEGMENT_BYTES="${SEGMENT_BYTES:-10485760}"
REPEAT="${REPEAT:-3}"
CORES="${CORES:-2}"
RMQ_NODE="${RMQ_NODE:-$ROOT/target/release/rmq-node}"
BENCH="$ROOT/target/release/rmq-bench"
DATA_ROOT="${DATA_ROOT:-/var/tmp}"
READY_TIMEOUT_S=120
TOPIC_PREFIX="recovery"

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p rmq-bench
    cargo build --release --bin rmq-node
fi
for bin in "$RMQ_NODE" "$BENCH"; do
    [[ -x "$bin" ]] || { echo "missing $bin (run without NO_BUILD=1)" >&2; exit 1; }
done

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-recovery-data.XXXXXX")"
if [[ "$(stat -f -c %T "$DATA_DIR")" == tmpfs ]]; then
    echo "$DATA_DIR is on tmpfs (O_DIRECT is silently dropped there); set DATA_ROOT" >&2
    rmdir "$DATA_DIR"
    exit 1
fi
need_kib=$((TARGET_GIB * 1024 * 1024 + 1024 * 1024))
avail_kib="$(df -Pk "$DATA_DIR" | awk 'NR==2 {print $4}')"
if ((avail_kib < need_kib)); then
    echo "need $((need_kib / 1024 / 1024)) GiB free under $DATA_ROOT, have $((avail_kib / 1024 / 1024)) GiB" >&2
    rmdir "$DATA_DIR"
    exit 1
fi
OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rmq-recovery-out.XXXXXX")"
LOG="$OUT_DIR/rmq-node.log"
BROKER_PID=""
BENCH_PID=""

cleanup() {
    [[ -z "$BENCH_PID" ]] || kill -KILL "$BENCH_PID" 2>/dev/null || true
    if [[ -n "$BROKER_PID" ]]; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$DATA_DIR"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# Starts the broker on DATA_DIR; sets BROKER_PID, ADDR and START_MS, READY_MS.
start_broker() {
    : >"$LOG"
    START_MS="$(now_ms)"
    "$RMQ_NODE" --cores "$CORES" --data-dir "$DATA_DIR" --kafka-addr 127.0.0.1:0 \
        --mqtt-addr 127.0.0.1:0 --mqtt-ws-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 >"$LOG" 2>&1 &
    BROKER_PID=$!
    ADDR=""
    while [[ -z "$ADDR" ]]; do
        kill -0 "$BROKER_PID" 2>/dev/null || { echo "rmq-node exited; log:" >&2; cat "$LOG" >&2; exit 1; }
        (($(now_ms) - START_MS < READY_TIMEOUT_S * 1000)) || { echo "not ready; log:" >&2; cat "$LOG" >&2; exit 1; }
        ADDR="$(sed -n 's/^rmq-node ready .*kafka=\([^ ]*\).*/\1/p' "$LOG" | head -n1)"
        [[ -n "$ADDR" ]] || sleep 0.01
    done
    READY_MS="$(now_ms)"
}

kill9_broker() {
    kill -KILL "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

start_broker
echo "rmq-node ready at $ADDR (data $DATA_DIR); filling one partition with $TARGET_GIB GiB"
"$BENCH" produce --bootstrap "$ADDR" --partitions 1 --message-size 1024 --acks 1 \
    --duration-s 100000 --warmup-s 0 --progress-s 10 --topic-prefix "$TOPIC_PREFIX" \
    --topic-config "segment.bytes=$SEGMENT_BYTES" \
    >"$OUT_DIR/fill.log" 2>&1 &
BENCH_PID=$!
fill_start="$(now_ms)"
target_bytes=$((TARGET_GIB * 1024 * 1024 * 1024))
while :; do
    kill -0 "$BENCH_PID" 2>/dev/null || { echo "producer exited:" >&2; cat "$OUT_DIR/fill.log" >&2; exit 1; }
    size_bytes="$(du -sb "$DATA_DIR" | cut -f1)"
    ((size_bytes < target_bytes)) || break
    sleep 1
done
fill_s=$((($(now_ms) - fill_start) / 1000))
kill9_broker
kill -KILL "$BENCH_PID" 2>/dev/null || true
wait "$BENCH_PID" 2>/dev/null || true
BENCH_PID=""
# Partition logs live in <data_dir>/<topic>/<partition>/.
PART_DIR="$(find "$DATA_DIR" -mindepth 2 -maxdepth 2 -type d -path "*/${TOPIC_PREFIX}*/0" | head -n1)"
[[ -n "$PART_DIR" ]] || { echo "no partition dir under $DATA_DIR" >&2; exit 1; }
TOPIC="$(basename "$(dirname "$PART_DIR")")"
segments="$(find "$PART_DIR" -name '*.log' | wc -l)"
echo "filled $(du -sh "$DATA_DIR" | cut -f1) in ${fill_s}s: $segments segments in $PART_DIR; killed with -9 mid-write"

printf '%-8s %10s %10s %14s\n' restart ready_ms serve_ms last_offset
for i in $(seq "$REPEAT"); do
    start_broker
    # The last record: kcat asks Metadata, ListOffsets(latest) and Fetches offset end-1.
    timeout 60 kcat -b "$ADDR" -C -t "$TOPIC" -p 0 -o -1 -c 1 -e -f '%o' >"$OUT_DIR/last.txt" 2>"$OUT_DIR/consume.err" ||
        { echo "kcat failed:" >&2; cat "$OUT_DIR/consume.err" >&2; exit 1; }
    SERVE_MS="$(now_ms)"
    printf '%-8s %10d %10d %14s\n' "$i" $((READY_MS - START_MS)) $((SERVE_MS - START_MS)) "$(tr -d '\n' <"$OUT_DIR/last.txt")"
    kill9_broker
done
echo "log of the last start: $LOG"
