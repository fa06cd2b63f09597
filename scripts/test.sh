#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need (real brokers, the
# toolchain librdkafka builds with, promtool), then runs every test.
#   - every crate's unit, integration and end-to-end tests (they start their own mosquitto and
#     tansu processes on free loopback ports), benchmarks as smoke tests, doc tests;
#   - promtool on the deploy/ rules, their unit tests, and on a /metrics scrape taken during
#     an end-to-end run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-brokers.sh

cargo test --workspace --all-targets
cargo test --workspace --doc

scripts/check-deploy.sh
PROMTOOL="$(command -v promtool || echo /usr/local/bin/promtool)"
scrape=target/e2e-metrics.prom
if [ ! -s "$scrape" ]; then
  echo "error: the end-to-end run left no /metrics scrape at $scrape" >&2
  exit 1
fi
echo "promtool check metrics $scrape"
"$PROMTOOL" check metrics < "$scrape"
