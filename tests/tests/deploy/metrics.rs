//! The metrics the bridge exports (prefix `voxsig_bridge_`), plus the standard ones: the one
//! list the dashboard and the alerts are checked against, itself checked against the source.

use crate::files::{files_under, read, repo};

pub(crate) const COUNTERS: &[&str] = &[
    "voxsig_bridge_connects_total",
    "voxsig_bridge_disconnects_total",
    "voxsig_bridge_reconnects_total",
    "voxsig_bridge_stale_connections_total",
    "voxsig_bridge_subscription_failures_total",
    "voxsig_bridge_subscriptions_confirmed_total",
    "voxsig_bridge_presence_updates_sent_total",
    "voxsig_bridge_events_received_total",
    "voxsig_bridge_events_deduplicated_total",
    "voxsig_bridge_dedup_forgotten_total",
    "voxsig_bridge_events_filtered_total",
    "voxsig_bridge_events_dropped_total",
    "voxsig_bridge_frame_errors_total",
    "voxsig_bridge_token_logouts_total",
    "voxsig_bridge_unknown_frames_total",
    "voxsig_bridge_sink_records_published_total",
    "voxsig_bridge_sink_records_failed_total",
    "voxsig_bridge_sink_redeliveries_total",
    "voxsig_bridge_sink_connection_errors_total",
    "voxsig_bridge_buffer_records_dropped_total",
    "voxsig_bridge_account_events_received_total",
    "voxsig_bridge_gaps_total",
    "voxsig_bridge_gaps_unrecovered_total",
    "voxsig_bridge_catchup_messages_total",
    "voxsig_bridge_live_duplicates_total",
    "voxsig_bridge_token_rotations_total",
    "voxsig_bridge_rest_requests_total",
];

pub(crate) const GAUGES: &[&str] = &[
    "voxsig_bridge_sockets",
    "voxsig_bridge_subscriptions",
    "voxsig_bridge_last_ping_age_seconds",
    "voxsig_bridge_sink_connected",
    "voxsig_bridge_buffer_events",
    "voxsig_bridge_buffer_bytes",
    "voxsig_bridge_buffer_capacity_events",
    "voxsig_bridge_buffer_capacity_bytes",
    "voxsig_bridge_ready",
    "voxsig_bridge_build_info",
];

pub(crate) const HISTOGRAMS: &[&str] = &[
    "voxsig_bridge_sink_publish_latency_seconds",
    "voxsig_bridge_gap_seconds",
    "voxsig_bridge_rest_request_seconds",
];

/// Whether a PromQL expression may name this series.
pub(crate) fn known_metric(name: &str) -> bool {
    if name == "up" || name.starts_with("process_") {
        return true;
    }
    if COUNTERS.contains(&name) || GAUGES.contains(&name) {
        return true;
    }
    HISTOGRAMS.iter().any(|h| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name == format!("{h}{suffix}"))
    })
}

/// Every metric listed above is registered somewhere in the crates (a string literal), and the
/// HTTP paths the probes use are routed: a rename in the code breaks this test, not a dashboard.
#[test]
fn listed_metrics_and_paths_exist_in_the_source() {
    let mut source = String::new();
    for path in files_under(&repo().join("crates")) {
        if path.extension().is_some_and(|x| x == "rs")
            && !path.components().any(|c| c.as_os_str() == "target")
        {
            source.push_str(&read(&path));
        }
    }
    for name in COUNTERS.iter().chain(GAUGES).chain(HISTOGRAMS) {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "{name} is not registered in crates/: update the list, the dashboard and the alerts"
        );
    }
    let http = read(&repo().join("crates/bridge/src/http.rs"));
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        assert!(
            http.contains(&format!("\"{path}\"")),
            "{path} is not routed"
        );
    }
}
