//! Reading a metric back: from a Prometheus registry, or from a `/metrics` scrape.

use prometheus::Registry;

/// The value of a metric: the sum over its counter and gauge series that carry every one of
/// `labels` (an absent metric reads as 0).
pub fn metric(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        // Counters and gauges: the absent one reads as 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}

/// The sum of a metric's samples in a Prometheus text exposition (a `/metrics` scrape), over all
/// its label sets (`name` or `name{...}` lines).
pub fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(&format!("{name}{{")) || l.split_whitespace().next() == Some(name)
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}
