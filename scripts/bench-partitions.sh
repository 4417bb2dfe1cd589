#!/usr/bin/env bash
# Partition-scale benchmark (issue 6 item 7): TOTAL partitions on one rmq-node.
#
# Starts target/release/rmq-node on free loopback ports with a raised open-file limit, runs
# scripts/bench_partitions.py (create in batches, RSS per idle partition, open files, Metadata
# of everything, random produce), then measures restart times on the same data dir:
#   clean_restart_ms   SIGTERM, then exec -> "rmq-node ready"
#   crash_restart_ms   kill -9, then exec -> "rmq-node ready"
# and the RSS and open files of the restarted broker. Aims (issue 6): RSS under 4 KiB per
# idle partition, restart under 10 s.
#
# Environment:
#   TOTAL (default 100000)  TOPICS (default 1000)  BATCH (topics per CreateTopics, default 50)
#   RECORDS (default 100000)  CORES (default 2)  NO_BUILD=1  RMQ_NODE
#   DATA_ROOT (default /var/tmp; must not be tmpfs)  KEEP_DATA=1
# Needs the test venv (.venv with confluent-kafka; scripts/install-test-deps.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOTAL="${TOTAL:-100000}"
TOPICS="${TOPICS:-1000}"
BATCH="${BATCH:-50}"
RECORDS="${RECORDS:-100000}"
CORES="${CORES:-2}"
RMQ_NODE="${RMQ_NODE:-$ROOT/target/release/rmq-node}"
DATA_ROOT="${DATA_ROOT:-/var/tmp}"
PY="$ROOT/.venv/bin/python"
READY_TIMEOUT_S=300
# Open files the broker may use: segment files of recently used partitions plus sockets.
NOFILE=1048576

[[ -x "$PY" ]] || { echo "no $PY: run scripts/install-test-deps.sh" >&2; exit 1; }
if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release --bin rmq-node
fi
[[ -x "$RMQ_NODE" ]] || { echo "no broker binary at $RMQ_NODE" >&2; exit 1; }
ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-partitions-data.XXXXXX")"
if [[ "$(stat -f -c %T "$DATA_DIR")" == tmpfs ]]; then
    echo "$DATA_DIR is on tmpfs (O_DIRECT is silently dropped there); set DATA_ROOT" >&2
    rmdir "$DATA_DIR"
    exit 1
fi
OUT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rmq-partitions-out.XXXXXX")"
LOG="$OUT_DIR/rmq-node.log"
BROKER_PID=""

cleanup() {
    if [[ -n "$BROKER_PID" ]]; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$DATA_DIR"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

start_broker() { # sets BROKER_PID ADDR START_MS READY_MS
    START_MS="$(now_ms)"
    "$RMQ_NODE" --cores "$CORES" --data-dir "$DATA_DIR" --kafka-addr 127.0.0.1:0 \
        --mqtt-addr 127.0.0.1:0 --mqtt-ws-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 >"$LOG" 2>&1 &
    BROKER_PID=$!
    ADDR=""
    while [[ -z "$ADDR" ]]; do
        kill -0 "$BROKER_PID" 2>/dev/null || { echo "rmq-node exited; log:" >&2; tail -30 "$LOG" >&2; exit 1; }
        (($(now_ms) - START_MS < READY_TIMEOUT_S * 1000)) || { echo "not ready; log:" >&2; tail -30 "$LOG" >&2; exit 1; }
        ADDR="$(sed -n 's/^rmq-node ready .*kafka=\([^ ]*\).*/\1/p' "$LOG" | head -n1)"
        [[ -n "$ADDR" ]] || sleep 0.02
    done
    READY_MS="$(now_ms)"
}

stop_broker() { # $1 = TERM or KILL
    kill "-$1" "$BROKER_PID"
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$BROKER_PID/status"; }
open_files() { ls "/proc/$BROKER_PID/fd" | wc -l; }

start_broker
echo "rmq-node ready at $ADDR (--cores $CORES, data $DATA_DIR, ulimit -n $(ulimit -n))"
"$PY" scripts/bench_partitions.py "$ADDR" "$BROKER_PID" --total "$TOTAL" --topics "$TOPICS" \
    --batch "$BATCH" --records "$RECORDS" --json "$OUT_DIR/scale.json"

stop_broker TERM
start_broker
clean_ms=$((READY_MS - START_MS))
clean_rss="$(rss_kib)"
clean_files="$(open_files)"
stop_broker KILL
start_broker
crash_ms=$((READY_MS - START_MS))
echo "restart  clean (SIGTERM): ready in ${clean_ms} ms, RSS ${clean_rss} KiB, open files ${clean_files}"
echo "restart  after kill -9:   ready in ${crash_ms} ms, RSS $(rss_kib) KiB, open files $(open_files)"
echo "data dir $(du -sh "$DATA_DIR" | cut -f1); JSON $OUT_DIR/scale.json"
