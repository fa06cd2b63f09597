//! The Grafana dashboard queries only metrics the bridge exports.

use crate::files::{deploy, read};
use crate::promql::assert_known_metrics;
use crate::yaml::{array_at, str_at};
use serde_json::Value;
use std::collections::BTreeSet;

#[test]
fn dashboard_panels_query_known_metrics() {
    let path = deploy().join("grafana/voxsig-bridge.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    assert_eq!(str_at(&dashboard, "/uid"), "voxsig-bridge");
    assert_eq!(str_at(&dashboard, "/title"), "voxsig-bridge");
    let variables = array_at(&dashboard, "/templating/list");
    let instance = variables
        .iter()
        .find(|v| str_at(v, "/name") == "instance")
        .expect("an `instance` variable");
    assert_eq!(str_at(instance, "/type"), "query");

    let mut panels: Vec<&Value> = Vec::new();
    for panel in array_at(&dashboard, "/panels") {
        panels.push(panel);
        if let Some(nested) = panel.pointer("/panels").and_then(Value::as_array) {
            panels.extend(nested);
        }
    }
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let id = panel
            .pointer("/id")
            .and_then(Value::as_i64)
            .expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        if str_at(panel, "/type") == "row" {
            continue;
        }
        let title = str_at(panel, "/title");
        let targets = array_at(panel, "/targets");
        assert!(!targets.is_empty(), "panel {title:?} has no target");
        for target in targets {
            let expr = str_at(target, "/expr");
            assert!(
                expr.contains("$instance"),
                "panel {title:?}: {expr} ignores $instance"
            );
            used.extend(assert_known_metrics(&format!("panel {title:?}"), expr));
        }
    }
    // What the dashboard must show.
    for metric in [
        "voxsig_bridge_sockets",
        "voxsig_bridge_reconnects_total",
        "voxsig_bridge_stale_connections_total",
        "voxsig_bridge_last_ping_age_seconds",
        "voxsig_bridge_subscriptions",
        "voxsig_bridge_events_received_total",
        "voxsig_bridge_sink_publish_latency_seconds_bucket",
        "voxsig_bridge_buffer_events",
        "voxsig_bridge_buffer_capacity_events",
        "voxsig_bridge_buffer_records_dropped_total",
        "voxsig_bridge_frame_errors_total",
        "voxsig_bridge_presence_updates_sent_total",
        "voxsig_bridge_sink_connected",
        "voxsig_bridge_sink_records_failed_total",
    ] {
        assert!(
            used.contains(metric),
            "the dashboard does not show {metric}"
        );
    }
    let latency = read(&path);
    assert!(latency.contains("histogram_quantile(0.99"));
}
