#!/usr/bin/env bash
# Consumer-group benchmark of rmq-node (group coordinator and __consumer_offsets path).
#
# Starts target/release/rmq-node --cores 2 on a data dir on disk (not tmpfs) with every listener
# on a free loopback port, waits for its "rmq-node ready kafka=HOST:PORT ..." line, then runs
# scripts/bench_groups.py with the .venv's confluent-kafka:
#   (1) subscribe() -> first record of a fresh consumer in a new group, REPS times, cold
#       (Consumer created just before), warm (connected first), and warm in a group that
#       already has committed offsets (librdkafka waits a fixed 100 ms before resetting a
#       partition without one): p50 / max / min
#   (2) offset commits per second over GROUP_COUNT group ids: a lean raw client (OffsetCommit v2;
#       RAW_RUNS connections x in-flight requests; every group's last commit is checked with
#       OffsetFetch afterwards) and librdkafka Consumer.commit(asynchronous=False)
# and prints a table, then stops the broker. No peer is measured.
#
# Environment:
#   REPS (default 10)  GROUP_COUNT (default 1000)  DURATION_S per raw commit run (default 10)
#   RAW_RUNS CONNECTIONSxIN_FLIGHT,... (default 1x1,16x4,1000x1: 1000 = one connection per group)
#   CK_COMMITS timed librdkafka commits per group (default 3; 0 skips that run)
#   CORES rmq-node --cores (default 2)   NO_BUILD=1 skip cargo build
#   RMQ_NODE broker binary (default target/release/rmq-node)
#   DATA_ROOT parent of the temporary data dir (default /var/tmp; must not be tmpfs)
#   OUT_DIR where the JSON result and the broker log go (default: a temp dir, printed)
# Extra arguments go to bench_groups.py (e.g. --only join).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REPS="${REPS:-10}"
GROUP_COUNT="${GROUP_COUNT:-1000}"
DURATION_S="${DURATION_S:-10}"
RAW_RUNS="${RAW_RUNS:-1x1,16x4,1000x1}"
CK_COMMITS="${CK_COMMITS:-3}"
CORES="${CORES:-2}"
RMQ_NODE="${RMQ_NODE:-$ROOT/target/release/rmq-node}"
PYTHON="$ROOT/.venv/bin/python"
DATA_ROOT="${DATA_ROOT:-/var/tmp}"
READY_TIMEOUT_S=60

if [[ "${NO_BUILD:-0}" != 1 && "$RMQ_NODE" == "$ROOT/target/release/rmq-node" ]]; then
    cargo build --release --bin rmq-node
fi
[[ -x "$RMQ_NODE" ]] || { echo "no broker binary at $RMQ_NODE" >&2; exit 1; }
"$PYTHON" -c 'import confluent_kafka' 2>/dev/null \
    || { echo "no confluent-kafka in $ROOT/.venv (run scripts/install-test-deps.sh)" >&2; exit 1; }

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-bench-groups.XXXXXX")"
if [[ "$(stat -f -c %T "$DATA_DIR")" == tmpfs ]]; then
    echo "$DATA_DIR is on tmpfs (O_DIRECT is silently dropped there); set DATA_ROOT" >&2
    rmdir "$DATA_DIR"
    exit 1
fi
OUT_DIR="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rmq-bench-groups-out.XXXXXX")}"
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

: >"$LOG"
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
echo

"$PYTHON" "$ROOT/scripts/bench_groups.py" "$ADDR" --reps "$REPS" --groups "$GROUP_COUNT" \
    --duration-s "$DURATION_S" --raw-runs "$RAW_RUNS" \
    --ck-commits "$CK_COMMITS" --json "$OUT_DIR/bench-groups.json" "$@"
echo
echo "(rmq-node --cores $CORES; JSON and broker log in $OUT_DIR)"
