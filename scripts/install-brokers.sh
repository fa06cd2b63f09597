#!/usr/bin/env bash
# Installs what the sink tests and benchmarks need, on a fresh Debian machine (run as root).
# Idempotent: installs only what is missing.
#   - mosquitto (+ mosquitto_passwd)       Debian package `mosquitto`
#   - nats-server (MQTT interop tests)     Debian package `nats-server` (the tests start their own
#                                          instance on free ports; the package's service is not used)
#   - rumqttd                              nothing to install: the interop tests run it from the
#                                          `rumqttd` crate in a process of their own
#   - a C toolchain for librdkafka         build-essential, pkg-config, libssl-dev, zlib1g-dev, perl
#     (rdkafka builds librdkafka from its bundled sources with ./configure + make; no cmake)
#   - the openssl CLI                      openssl (certificates for the mqtts test)
#   - tansu (Kafka-compatible broker)      cargo install tansu --locked --features dynostore
set -euo pipefail

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "install-brokers: installing mosquitto (Debian package)"
  apt_install mosquitto mosquitto-clients
fi

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "install-brokers: installing nats-server (Debian package)"
  apt_install nats-server
fi

missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev perl openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-brokers: installing ${missing[*]} (librdkafka build; openssl CLI for the TLS test)"
  apt_install "${missing[@]}"
fi

if ! command -v tansu >/dev/null 2>&1; then
  echo "install-brokers: installing tansu with cargo; this is SLOW (about 16 minutes on 2 cores), once per machine"
  cargo install tansu --locked --features dynostore
fi
echo "install-brokers: mosquitto $(command -v mosquitto || echo /usr/sbin/mosquitto), nats-server $(command -v nats-server || echo /usr/sbin/nats-server), tansu $(command -v tansu)"
