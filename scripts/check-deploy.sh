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
    apt-get update -qq
    # `apt-get download` fetches the .deb only: no dependencies, no maintainer scripts, so no
    # prometheus service is created or started. promtool is a Go binary needing only libc.
    (cd "$workdir" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$workdir"/prometheus_*.deb "$workdir/root"
    install -m 0755 "$workdir/root/usr/bin/promtool" /usr/local/bin/promtool
    rm -rf "$workdir"
    PROMTOOL=/usr/local/bin/promtool
  fi
fi
"$PROMTOOL" --version 2>&1 | sed -n 1p

echo "== promtool check rules deploy/prometheus/alerts.yml"
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
echo "== promtool test rules deploy/prometheus/alerts.test.yml"
"$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
echo "== promtool check config deploy/prometheus/prometheus.yml"
# The rule file is referenced relative to the config, so this checks it again in place.
"$PROMTOOL" check config deploy/prometheus/prometheus.yml

echo "== promtool check rules: the Grafana dashboard's queries"
# Every panel query, with Grafana's variables filled in, as a recording rule: promtool then
# parses each one as PromQL.
if command -v python3 >/dev/null 2>&1; then
  queries="$(mktemp --suffix=.yml)"
  trap 'rm -f "$queries"' EXIT
  python3 - deploy/grafana/voxsig-bridge.json "$queries" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
rules = []
def walk(panels):
    for panel in panels:
        walk(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
            rules.append({"record": "dashboard:panel_%d:%s" % (panel["id"], target["refId"]), "expr": expr})
walk(dashboard["panels"])
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"), indent=1)
print("%d dashboard queries" % len(rules))
PY
  "$PROMTOOL" check rules "$queries"
else
  echo "python3 not found: skipping"
fi

if command -v kubectl >/dev/null 2>&1; then
  echo "== kubectl kustomize deploy/k8s"
  kubectl kustomize deploy/k8s >/dev/null
else
  echo "== kubectl not found: skipping the kustomize render (tests/tests/deploy/k8s.rs checks structure)"
fi
echo "deploy checks: OK"
