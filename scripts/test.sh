#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real brokers the end-to-end tests start on free ports (they never use a system-wide instance).
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (Debian package)"
  apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients
fi

cargo test --workspace --all-targets
cargo test --workspace --doc
