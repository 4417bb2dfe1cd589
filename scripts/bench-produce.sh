#!/usr/bin/env bash
# Produce micro-benchmark of rmq-node (the kernel's append path).
#
# Starts target/release/rmq-node --cores 2 on a data dir on disk (not tmpfs) with the Kafka
# listener on a free loopback port, waits for its "rmq-node ready kafka=HOST:PORT" line, runs
#   (a) max rate, 100-byte records, acks=1, 1 partition
#   (b) fixed rate 50 MiB/s of 1 KiB records, acks=-1, 1 partition
# with rmq-bench, prints msgs/s, MB/s and publish latency p50/p99/p99.9, then stops the broker.
#
# Environment:
#   DURATION_S   seconds per run (default 20)      WARMUP_S  seconds of warmup (default 5)
#   CORES        rmq-node --cores (default 2)     NO_BUILD=1 skip cargo build
#   RMQ_NODE     broker binary (default target/release/rmq-node)
#   DATA_ROOT    parent of the temporary data dir (default /var/tmp; must not be tmpfs)
#   OUT_DIR      where JSON results go (default: a temp dir, printed)
# Extra arguments are passed to every rmq-bench run (e.g. --batch-bytes 65536).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION_S="${DURATION_S:-20}"
WARMUP_S="${WARMUP_S:-5}"
CORES="${CORES:-2}"
RMQ_NODE="${RMQ_NODE:-$ROOT/target/release/rmq-node}"
BENCH="$ROOT/target/release/rmq-bench"
DATA_ROOT="${DATA_ROOT:-/var/tmp}"
READY_TIMEOUT_S=60

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p rmq-bench
    if [[ "$RMQ_NODE" == "$ROOT/target/release/rmq-node" ]]; then
        cargo build --release --bin rmq-node
    fi
fi
[[ -x "$RMQ_NODE" ]] || { echo "no broker binary at $RMQ_NODE" >&2; exit 1; }
[[ -x "$BENCH" ]] || { echo "no $BENCH (run without NO_BUILD=1)" >&2; exit 1; }

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-bench-data.XXXXXX")"
if [[ "$(stat -f -c %T "$DATA_DIR")" == tmpfs ]]; then
    echo "$DATA_DIR is on tmpfs (O_DIRECT is silently dropped there); set DATA_ROOT" >&2
    rmdir "$DATA_DIR"
    exit 1
fi
OUT_DIR="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rmq-bench-out.XXXXXX")}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/rmq-node.log"
BROKER_PID=""

stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
    rm -rf "$DATA_DIR"
}
trap stop_broker EXIT

"$RMQ_NODE" --cores "$CORES" --data-dir "$DATA_DIR" --kafka-addr 127.0.0.1:0 \
  --mqtt-addr 127.0.0.1:0 --mqtt-ws-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 >"$LOG" 2>&1 &
BROKER_PID=$!

ADDR=""
deadline=$((SECONDS + READY_TIMEOUT_S))
while [[ -z "$ADDR" ]]; do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        echo "rmq-node exited before it was ready; log:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    if ((SECONDS > deadline)); then
        echo "rmq-node not ready after ${READY_TIMEOUT_S}s; log:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    ADDR="$(sed -n 's/^rmq-node ready .*kafka=\([^ ]*\).*/\1/p' "$LOG" | head -n1)"
    [[ -n "$ADDR" ]] || sleep 0.1
done
echo "rmq-node (pid $BROKER_PID, --cores $CORES, data $DATA_DIR) ready at $ADDR"

run() { # name, rmq-bench produce args...
    local name="$1"
    shift
    echo "== $name"
    "$BENCH" produce --bootstrap "$ADDR" --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" \
        --json "$OUT_DIR/$name.json" "$@" "${EXTRA[@]}"
}
EXTRA=("$@")

run a-max-rate-100b-acks1 --partitions 1 --message-size 100 --acks 1
run b-fixed-50mbps-1kb-acksall --partitions 1 --message-size 1024 --rate-mbps 50 --acks -1

echo
echo "== summary (rmq-node --cores $CORES, ${DURATION_S}s per run; JSON in $OUT_DIR)"
python3 - "$OUT_DIR" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print(f"{'run':34} {'msgs/s':>12} {'MB/s':>8} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'errors':>7}")
for f in sorted(out.glob("*.json")):
    r = json.loads(f.read_text())
    p = r["publish_latency_us"]
    print(f"{f.stem:34} {r['publish']['msgs_per_sec']:12.0f} {r['publish']['mb_per_sec']:8.1f} "
          f"{p['p50']:8d} {p['p99']:8d} {p['p99_9']:9d} {r['publish_errors']:7d}")
EOF
