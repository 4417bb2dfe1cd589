#!/usr/bin/env bash
# Full test run: deps, release build of rmq-node, Rust unit tests, Python integration tests.
# Exit non-zero if any step fails or if pytest collects no tests.
#
#   scripts/test.sh [PYTEST_ARGS...]    e.g. scripts/test.sh -k crash
#   RMQ_SKIP_CARGO=1 scripts/test.sh    skip the cargo build/test steps (binary must exist)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

T0=$(date +%s)
declare -a SUMMARY=()
FAILED=0

run_step() {  # run_step NAME CMD...
  local name="$1"; shift
  local t0 rc
  t0=$(date +%s)
  echo
  echo "==> [$name] $*"
  "$@"
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("  ok    $name (${dt}s)")
  else
    SUMMARY+=("  FAIL  $name (exit $rc, ${dt}s)")
    FAILED=1
  fi
  return "$rc"
}

print_summary() {
  echo
  echo "==================== test.sh summary ($(( $(date +%s) - T0 ))s) ===================="
  printf '%s\n' "${SUMMARY[@]}"
  if [ -n "${CARGO_TEST_LOG:-}" ] && [ -f "$CARGO_TEST_LOG" ]; then
    # Tests that failed, panicked or ran long (a hang shows as "running for over 60 seconds").
    grep -E "running for over|FAILED|panicked at|^error" "$CARGO_TEST_LOG" | head -20 \
      | sed 's/^/  cargo test: /'
  fi
  if [ "$FAILED" -ne 0 ]; then echo "RESULT: FAILED"; else echo "RESULT: OK"; fi
  # Last line: the integration-test counts.
  if [ -n "${PYTEST_LINE:-}" ]; then
    echo "$PYTEST_LINE"
  fi
}

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! run_step "install-test-deps" bash scripts/install-test-deps.sh; then
  print_summary; exit 1
fi

if [ "${RMQ_SKIP_CARGO:-0}" != "1" ]; then
  if ! run_step "cargo build --release -p rmq-broker --bins (rmq-node, rmq)" \
       timeout 2400 cargo build --release -p rmq-broker --bins; then
    print_summary; exit 1
  fi
  if ! run_step "cargo build --release -p rmq-bench" \
       timeout 1800 cargo build --release -p rmq-bench; then
    print_summary; exit 1
  fi
  # The output also goes to a log, so the summary can name failed or hanging tests: CI shows
  # only the tail of this script's output.
  CARGO_TEST_LOG="$ROOT/target/cargo-test.log"
  run_step "cargo test --workspace --release" \
    bash -o pipefail -c 'timeout --kill-after=30 2400 cargo test --workspace --release 2>&1 | tee "$1"' \
    _ "$CARGO_TEST_LOG"
else
  SUMMARY+=("  skip  cargo build/test (RMQ_SKIP_CARGO=1)")
fi

JUNIT="$ROOT/target/pytest-junit.xml"
rm -f "$JUNIT"
export RMQ_NODE_BIN="${RMQ_NODE_BIN:-$ROOT/target/release/rmq-node}"
export RMQ_BENCH_BIN="${RMQ_BENCH_BIN:-$ROOT/target/release/rmq-bench}"
echo
echo "==> [pytest] RMQ_NODE_BIN=$RMQ_NODE_BIN"
t0=$(date +%s)
( cd "$ROOT/tests" && timeout --kill-after=30 2700 "$ROOT/.venv/bin/python" -m pytest . -v \
    --durations=15 --junitxml="$JUNIT" "$@" )
rc=$?
dt=$(( $(date +%s) - t0 ))
if [ "$rc" -eq 0 ]; then
  SUMMARY+=("  ok    pytest tests/ (${dt}s)")
elif [ "$rc" -eq 5 ]; then
  SUMMARY+=("  FAIL  pytest tests/: no tests collected (${dt}s)")
  FAILED=1
else
  SUMMARY+=("  FAIL  pytest tests/ (exit $rc, ${dt}s)")
  FAILED=1
fi
if [ -f "$JUNIT" ]; then
  PYTEST_LINE="$("$ROOT/.venv/bin/python" - "$JUNIT" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = sum(int(s.get("tests", 0)) for s in suites)
f = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
sk = sum(int(s.get("skipped", 0)) for s in suites)
print("pytest: %d passed, %d failed, %d skipped" % (t - f - sk, f, sk))
PY
)"
fi

print_summary
exit "$FAILED"
