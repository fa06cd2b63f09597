//! Structural checks of `deploy/`, without Docker, kubectl or a network: every YAML parses
//! (multi-document, merge keys), the Kubernetes objects fit together (selectors, ports, probes,
//! shard variables, security), compose mounts files that exist, the shipped bridge configs load
//! with the bridge's own config loader, the compose demo's accounts match the simulator's world,
//! the Grafana dashboard and the alerts name only metrics the bridge exports, every alert is
//! documented and unit-tested, and the Dockerfile is multi-stage and non-root.
//!
//! `scripts/check-deploy.sh` adds what needs promtool (rule syntax, rule unit tests, the
//! Prometheus config).

mod alerts;
mod compose;
mod dashboard;
mod dockerfile;
mod files;
mod k8s;
mod metrics;
mod promql;
mod yaml;
