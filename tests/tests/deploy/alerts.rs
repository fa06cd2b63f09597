//! Alerts name known metrics, are documented and unit-tested.

use crate::files::{deploy, read, repo};
use crate::promql::assert_known_metrics;
use crate::yaml::{array_at, str_at, strings_at, yaml_doc};
use serde_json::Value;
use std::collections::BTreeSet;

/// GitHub's anchor for a Markdown heading.
pub(crate) fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

pub(crate) fn alert_rules() -> Vec<Value> {
    let alerts = yaml_doc(&deploy().join("prometheus/alerts.yml"));
    array_at(&alerts, "/groups")
        .iter()
        .flat_map(|g| array_at(g, "/rules").clone())
        .collect()
}

#[test]
fn alerts_name_known_metrics_and_are_documented() {
    let operations = read(&repo().join("docs/OPERATIONS.md"));
    let anchors: BTreeSet<String> = operations
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    let mut used = BTreeSet::new();
    for rule in &rules {
        let name = str_at(rule, "/alert");
        assert!(names.insert(name.to_owned()), "duplicate alert {name}");
        used.extend(assert_known_metrics(name, str_at(rule, "/expr")));
        assert!(
            ["critical", "warning", "info"].contains(&str_at(rule, "/labels/severity")),
            "{name}: severity"
        );
        for annotation in ["summary", "description", "runbook"] {
            assert!(
                !str_at(rule, &format!("/annotations/{annotation}")).is_empty(),
                "{name}: {annotation}"
            );
        }
        let runbook = str_at(rule, "/annotations/runbook");
        let (doc, fragment) = runbook.split_once('#').expect("runbook has an anchor");
        assert_eq!(doc, "docs/OPERATIONS.md", "{name}");
        assert!(
            anchors.contains(fragment),
            "{name}: docs/OPERATIONS.md has no heading for #{fragment}"
        );
        assert!(
            str_at(rule, "/expr").contains(r#"job="voxsig-bridge""#),
            "{name}"
        );
    }
    for required in [
        "VoxsigBridgeDown",
        "VoxsigBridgeAbsent",
        "VoxsigBridgeSubscriptionFailures",
        "VoxsigBridgeSubscriptionFailuresGrowing",
        "VoxsigBridgeNoEvents",
        "VoxsigBridgeSinkErrors",
        "VoxsigBridgeSinkDisconnected",
        "VoxsigBridgeQueueNearFull",
        "VoxsigBridgeReconnectStorm",
        "VoxsigBridgeTokenLoggedOut",
    ] {
        assert!(names.contains(required), "alert {required} missing");
    }
    for metric in [
        "up",
        "voxsig_bridge_subscription_failures_total",
        "voxsig_bridge_sockets",
        "voxsig_bridge_events_received_total",
        "voxsig_bridge_sink_records_failed_total",
        "voxsig_bridge_sink_connected",
        "voxsig_bridge_buffer_events",
        "voxsig_bridge_buffer_capacity_events",
        "voxsig_bridge_reconnects_total",
        "voxsig_bridge_token_logouts_total",
    ] {
        assert!(used.contains(metric), "no alert uses {metric}");
    }
}

#[test]
fn every_alert_has_firing_and_quiet_unit_tests() {
    let tests = yaml_doc(&deploy().join("prometheus/alerts.test.yml"));
    assert_eq!(strings_at(&tests, "/rule_files"), ["alerts.yml"]);
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in array_at(&tests, "/tests") {
        for t in array_at(case, "/alert_rule_test") {
            let name = str_at(t, "/alertname").to_owned();
            let expected = t.pointer("/exp_alerts").and_then(Value::as_array);
            match expected {
                Some(list) if !list.is_empty() => {
                    fires.insert(name);
                }
                _ => {
                    quiet.insert(name);
                }
            }
        }
    }
    for rule in alert_rules() {
        let name = str_at(&rule, "/alert");
        assert!(fires.contains(name), "{name}: no unit test where it fires");
        assert!(
            quiet.contains(name),
            "{name}: no unit test where it stays quiet"
        );
    }
}
