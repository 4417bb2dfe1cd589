#!/usr/bin/env bash
# Install what the integration tests need. Idempotent and non-interactive
# (CI=true, no stdin, root, Debian 12). Safe to run repeatedly.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Exact pins (checked with `pip index versions`).
PY_PINS=(
  "confluent-kafka==2.16.1"
  "kafka-python==2.3.3"
  "aiokafka==0.14.0"
  "paho-mqtt==2.1.0"
  "pytest==8.4.2"
  "pytest-timeout==2.4.0"
)

export DEBIAN_FRONTEND=noninteractive

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
fi

need_apt=()
command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 \
  || need_apt+=(build-essential)
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 \
  || need_apt+=(mosquitto-clients)
# The MQTT peer that rmq-bench is compared with (tests/test_bench.py, scripts/compare.sh).
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
# python3 -m venv needs ensurepip; Debian's system python3 needs python3-venv.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}"
  $SUDO apt-get update </dev/null
  $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}" </dev/null
else
  echo "install-test-deps: system packages present (cc, make, kcat, mosquitto-clients, python3 venv)"
fi

VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "install-test-deps: creating $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV"; then
    # Fall back to a venv without pip, then bootstrap pip via ensurepip.
    rm -rf "$VENV"
    python3 -m venv --without-pip "$VENV"
    "$VENV/bin/python" -m ensurepip --upgrade
  fi
fi

# Only call pip when a pin is not satisfied (keeps re-runs fast and offline-friendly).
if ! "$VENV/bin/python" - "${PY_PINS[@]}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version, PackageNotFoundError
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "install-test-deps: pip install ${PY_PINS[*]}"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "${PY_PINS[@]}" </dev/null
else
  echo "install-test-deps: python packages already pinned in .venv"
fi

"$VENV/bin/python" -c 'import aiokafka, confluent_kafka, kafka, paho.mqtt, pytest; print("install-test-deps: confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__, "aiokafka", aiokafka.__version__, "paho-mqtt", paho.mqtt.__version__, "pytest", pytest.__version__)'
kcat -V 2>&1 | head -1 || true
