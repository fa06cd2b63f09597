#!/usr/bin/env bash
# Checks the Prometheus files in deploy/ with promtool: the alert rules, their unit tests
# (deploy/prometheus/alerts.test.yml) and the compose Prometheus config. Installs promtool when
# missing by extracting it from Debian's `prometheus` package (no Prometheus server is installed
# or started). When kubectl is on PATH, also renders the Kubernetes kustomization.
# Idempotent; exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PROMTOOL="${PROMTOOL:-}"
if [ -z "$PROMTOOL" ]; then
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL="$(command -v promtool)"
  elif [ -x /usr/local/bin/promtool ]; then
    PROMTOOL=/usr/local/bin/promtool
  else
    echo "installing promtool (extracted from Debian's prometheus package)"
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "error: promtool is missing and apt-get is not available; set PROMTOOL=/path/to/promtool" >&2
      exit 1
    fi
    workdir="$(mktemp -d)"
    trap 'rm -rf "$workdir"' EXIT
    apt-get update -qq
    # `apt-get download` fetches the .deb only: no dependencies, no maintainer scripts, so no
    # prometheus service is created or started. promtool is a static Go binary.
    (cd "$workdir" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$workdir"/prometheus_*.deb "$workdir/root"
    install -m 0755 "$workdir/root/usr/bin/promtool" /usr/local/bin/promtool
    PROMTOOL=/usr/local/bin/promtool
  fi
fi
"$PROMTOOL" --version 2>&1 | head -n 1

echo "== promtool check rules deploy/prometheus/alerts.yml"
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
echo "== promtool test rules deploy/prometheus/alerts.test.yml"
"$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
echo "== promtool check config deploy/prometheus/prometheus.yml"
# The rule file is referenced relative to the config, so this checks it again in place.
"$PROMTOOL" check config deploy/prometheus/prometheus.yml

if command -v kubectl >/dev/null 2>&1; then
  echo "== kubectl kustomize deploy/k8s"
  kubectl kustomize deploy/k8s >/dev/null
else
  echo "== kubectl not found: skipping the kustomize render (tests/tests/deploy.rs checks structure)"
fi
echo "deploy checks: OK"
