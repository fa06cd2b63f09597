//! Structural checks of `deploy/`, without Docker, kubectl or a network: every YAML parses
//! (multi-document, merge keys), the Kubernetes objects fit together (selectors, ports, probes,
//! shard variables, security), compose mounts files that exist, the shipped bridge configs load
//! with the bridge's own config loader, the compose demo's accounts match the simulator's world,
//! the Grafana dashboard and the alerts name only metrics the bridge exports, every alert is
//! documented and unit-tested, and the Dockerfile is multi-stage and non-root.
//!
//! `scripts/check-deploy.sh` adds what needs promtool (rule syntax, rule unit tests, the
//! Prometheus config).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

// ----------------------------------------------------------------------------------------------
// The metrics the bridge exports (prefix voxsig_bridge_), plus the standard ones.

const COUNTERS: &[&str] = &[
    "voxsig_bridge_connects_total",
    "voxsig_bridge_disconnects_total",
    "voxsig_bridge_reconnects_total",
    "voxsig_bridge_stale_connections_total",
    "voxsig_bridge_subscription_failures_total",
    "voxsig_bridge_subscriptions_confirmed_total",
    "voxsig_bridge_presence_updates_sent_total",
    "voxsig_bridge_events_received_total",
    "voxsig_bridge_events_deduplicated_total",
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

const GAUGES: &[&str] = &[
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

const HISTOGRAMS: &[&str] = &[
    "voxsig_bridge_sink_publish_latency_seconds",
    "voxsig_bridge_gap_seconds",
    "voxsig_bridge_rest_request_seconds",
];

/// Whether a PromQL expression may name this series.
fn known_metric(name: &str) -> bool {
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

// ----------------------------------------------------------------------------------------------
// Files.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("readable directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn yaml_files() -> Vec<PathBuf> {
    files_under(&deploy())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect()
}

/// A scratch file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str, contents: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("voxsig-deploy-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("writable temp dir");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ----------------------------------------------------------------------------------------------
// YAML, as JSON values (keys as strings; `<<` merge keys applied).

fn yaml_to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(s.clone()), Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            let mut merged = Vec::new();
            for (k, v) in hash {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("unsupported YAML key {other:?}"),
                };
                if key == "<<" {
                    merged.push(yaml_to_json(v));
                } else {
                    map.insert(key, yaml_to_json(v));
                }
            }
            // Merge keys: the mapping's own keys win over merged ones.
            for m in merged {
                let sources = match m {
                    Value::Array(list) => list,
                    other => vec![other],
                };
                for source in sources {
                    let Value::Object(source) = source else {
                        panic!("`<<` must merge a mapping")
                    };
                    for (k, v) in source {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            Value::Object(map)
        }
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unresolved YAML node {yaml:?}"),
    }
}

/// The documents of a YAML file.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
    docs.iter().map(yaml_to_json).collect()
}

/// The single document of a YAML file.
fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value}"))
}

fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} is not a list in {value}"))
}

/// A list of strings.
fn strings_at<'a>(value: &'a Value, pointer: &str) -> Vec<&'a str> {
    array_at(value, pointer)
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{pointer} holds a non-string"))
        })
        .collect()
}

/// A mapping of strings (labels, selectors) as a sorted map.
fn string_map(value: &Value, pointer: &str) -> BTreeMap<String, String> {
    value
        .pointer(pointer)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{pointer} is not a mapping in {value}"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .unwrap_or_else(|| panic!("{pointer}.{k} is not a string"));
            (k.clone(), v.to_owned())
        })
        .collect()
}

/// Whether every pair of `selector` is in `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ----------------------------------------------------------------------------------------------
// Metric names in PromQL.

const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
];

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// ranges and grouping clauses that are neither functions, aggregations nor keywords. Grafana
/// variables (`$instance`, `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let plain = strip_grouping(&strip_enclosed(expr));
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some((token, end)) = next_token(&chars, i) {
        i = end;
        let Token::Word(word) = token else { continue };
        let called = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
        if !called && !PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
            names.insert(word);
        }
    }
    names
}

/// A lexical token of PromQL, as far as [`metric_names`] cares.
enum Token {
    /// An identifier: a metric, function, aggregation or keyword.
    Word(String),
    /// A number, a duration, a Grafana variable or punctuation.
    Other,
}

/// The token starting at or after `i`, and where it ends.
fn next_token(chars: &[char], mut i: usize) -> Option<(Token, usize)> {
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() && chars[i].is_whitespace() {
        i += 1;
    }
    let c = *chars.get(i)?;
    let start = i;
    i += 1;
    if c == '$' {
        // A Grafana variable: $name or ${name}.
        while i < chars.len() && (ident_char(chars[i]) || chars[i] == '{' || chars[i] == '}') {
            i += 1;
        }
    } else if c.is_ascii_digit() || c == '.' {
        // A number or a duration (0.99, 1e3, 5m).
        while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
            i += 1;
        }
    } else if ident_start(c) {
        while i < chars.len() && ident_char(chars[i]) {
            i += 1;
        }
        return Some((Token::Word(chars[start..i].iter().collect()), i));
    }
    Some((Token::Other, i))
}

/// The expression with strings, `{label matchers}` and `[ranges]` blanked out.
fn strip_enclosed(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            q @ ('"' | '\'' | '`') => {
                i += 1;
                while i < chars.len() && chars[i] != q {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push(' ');
            }
            open @ ('{' | '[') => {
                let close = if open == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The expression without grouping clauses (`by (a, b)`, `on (c)`, `group_left (d)`), so an
/// aggregation is directly followed by its parenthesis.
fn strip_grouping(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while let Some((token, end)) = next_token(&chars, i) {
        let grouping = matches!(&token, Token::Word(w) if matches!(
            w.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ));
        let open = chars[end..].iter().position(|c| !c.is_whitespace());
        if grouping && open.is_some_and(|o| chars[end + o] == '(') {
            let close = chars[end..]
                .iter()
                .position(|c| *c == ')')
                .expect("closed grouping clause");
            i = end + close + 1;
            out.push(' ');
        } else {
            out.extend(&chars[i..end]);
            i = end;
        }
    }
    out
}

/// Fails with every unknown metric an expression names.
fn assert_known_metrics(context: &str, expr: &str) -> BTreeSet<String> {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{context}: names no metric: {expr}");
    let unknown: Vec<_> = names.iter().filter(|n| !known_metric(n)).collect();
    assert!(
        unknown.is_empty(),
        "{context}: unknown metric(s) {unknown:?} in {expr}"
    );
    names
}

#[test]
fn promql_metric_names_are_extracted() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, sink) (rate(a_bucket{instance=~"$instance"}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names(r#"sum by (job) (b{state="open"}) > 0 and on (job) (rate(c[15m]) or d * 0) == 0"#),
        ["b", "c", "d"]
    );
    assert_eq!(
        names("sum(rate(e[5m] offset 1h)) without (x) / ignoring(y) group_left f > bool 1e3"),
        ["e", "f"]
    );
    assert_eq!(names(r#"absent(up{job="x"})"#), ["up"]);
    assert!(known_metric(
        "voxsig_bridge_sink_publish_latency_seconds_bucket"
    ));
    assert!(!known_metric(
        "voxsig_bridge_sink_publish_latency_seconds_total"
    ));
    assert!(!known_metric("voxsig_bridge_nonexistent"));
}

// ----------------------------------------------------------------------------------------------
// Every YAML file.

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files();
    assert!(
        files.len() >= 12,
        "expected deploy/ YAML files, found {files:?}"
    );
    for path in files {
        let docs = yaml_docs(&path);
        assert!(!docs.is_empty(), "{}: no document", path.display());
        for doc in docs {
            assert!(
                doc.is_object(),
                "{}: a document is not a mapping",
                path.display()
            );
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Kubernetes.

/// Every object of deploy/k8s (the kustomization's resources), by kind.
fn k8s_objects() -> BTreeMap<String, Vec<Value>> {
    let kustomization = yaml_doc(&deploy().join("k8s/kustomization.yaml"));
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for resource in array_at(&kustomization, "/resources") {
        let file = resource.as_str().expect("resource is a file name");
        for doc in yaml_docs(&deploy().join("k8s").join(file)) {
            by_kind
                .entry(str_at(&doc, "/kind").to_owned())
                .or_default()
                .push(doc);
        }
    }
    by_kind
}

fn one<'a>(objects: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    let list = objects
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s"));
    assert_eq!(list.len(), 1, "exactly one {kind}");
    &list[0]
}

#[test]
fn kubernetes_documents_have_api_version_kind_and_name() {
    let dir = deploy().join("k8s");
    for path in yaml_files().into_iter().filter(|p| p.starts_with(&dir)) {
        for doc in yaml_docs(&path) {
            let shown = path.display();
            let kind = str_at(&doc, "/kind");
            assert!(!str_at(&doc, "/apiVersion").is_empty(), "{shown}");
            if kind == "Kustomization" {
                continue;
            }
            assert!(
                !str_at(&doc, "/metadata/name").is_empty(),
                "{shown}: {kind}"
            );
        }
    }
}

#[test]
fn kustomization_lists_every_manifest_and_only_existing_files() {
    let dir = deploy().join("k8s");
    let kustomization = yaml_doc(&dir.join("kustomization.yaml"));
    assert_eq!(str_at(&kustomization, "/kind"), "Kustomization");
    let listed: BTreeSet<String> = array_at(&kustomization, "/resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect();
    for file in &listed {
        assert!(
            dir.join(file).is_file(),
            "kustomization lists missing {file}"
        );
    }
    for path in yaml_files().into_iter().filter(|p| p.starts_with(&dir)) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "kustomization.yaml" || name.ends_with(".patch.yaml") {
            continue;
        }
        assert!(
            listed.contains(&name),
            "{name} is not in kustomization.yaml"
        );
    }
    for required in [
        "statefulset.yaml",
        "configmap.yaml",
        "secret.yaml",
        "service.yaml",
        "servicemonitor.yaml",
    ] {
        assert!(listed.contains(required), "{required} missing");
    }
    // The optional patch (commented out in the kustomization) patches what exists.
    let text = read(&dir.join("kustomization.yaml"));
    for path in files_under(&dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".patch.yaml") {
            continue;
        }
        assert!(
            text.contains(&name),
            "kustomization.yaml does not mention {name}"
        );
        let patch = yaml_doc(&path);
        let objects = k8s_objects();
        let target = one(&objects, str_at(&patch, "/kind"));
        assert_eq!(
            str_at(&patch, "/metadata/name"),
            str_at(target, "/metadata/name")
        );
        let containers = array_at(target, "/spec/template/spec/containers");
        for c in array_at(&patch, "/spec/template/spec/containers") {
            let name = str_at(c, "/name");
            assert!(
                containers.iter().any(|t| str_at(t, "/name") == name),
                "patch names container {name}"
            );
        }
    }
}

/// The bridge container of the StatefulSet.
fn bridge_container(statefulset: &Value) -> &Value {
    let containers = array_at(statefulset, "/spec/template/spec/containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    array_at(container, "/env")
        .iter()
        .find(|e| str_at(e, "/name") == name)
        .unwrap_or_else(|| panic!("env {name} missing"))
}

#[test]
fn statefulset_shards_probes_resources_and_security() {
    let objects = k8s_objects();
    let sts = one(&objects, "StatefulSet");
    let replicas = sts
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .expect("replicas");
    assert_eq!(replicas, 2);
    assert_eq!(str_at(sts, "/spec/podManagementPolicy"), "Parallel");
    let selector = string_map(sts, "/spec/selector/matchLabels");
    let pod_labels = string_map(sts, "/spec/template/metadata/labels");
    assert!(
        selects(&selector, &pod_labels),
        "selector must match the pod labels"
    );
    let service = one(&objects, "Service");
    assert_eq!(
        str_at(sts, "/spec/serviceName"),
        str_at(service, "/metadata/name")
    );

    let c = bridge_container(sts);
    let port = array_at(c, "/ports")
        .iter()
        .find(|p| p.pointer("/containerPort").and_then(Value::as_i64) == Some(9898))
        .expect("container port 9898");
    assert_eq!(str_at(port, "/name"), "metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(str_at(c, &format!("/{probe}/httpGet/path")), path);
        let port = c.pointer(&format!("/{probe}/httpGet/port")).unwrap();
        assert!(
            port == "metrics" || port == 9898,
            "{probe} must use the metrics port, not {port}"
        );
    }

    // Shards: the index from the pod's ordinal, the count equal to replicas.
    let index = env_var(c, "VOXSIG_BRIDGE_SHARD__INDEX");
    assert_eq!(
        str_at(index, "/valueFrom/fieldRef/fieldPath"),
        "metadata.labels['apps.kubernetes.io/pod-index']"
    );
    let count = env_var(c, "VOXSIG_BRIDGE_SHARD__COUNT");
    assert_eq!(str_at(count, "/value"), replicas.to_string());
    assert_eq!(
        str_at(env_var(c, "VOXSIG_BRIDGE_METRICS__LISTEN"), "/value"),
        "0.0.0.0:9898"
    );

    // Security: non-root, read-only root, no privilege escalation, no capabilities.
    let pod_security = sts.pointer("/spec/template/spec/securityContext").unwrap();
    assert_eq!(
        pod_security.pointer("/runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert_ne!(pod_security.pointer("/runAsUser"), Some(&Value::from(0)));
    assert_eq!(
        c.pointer("/securityContext/runAsNonRoot"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        c.pointer("/securityContext/readOnlyRootFilesystem"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        c.pointer("/securityContext/allowPrivilegeEscalation"),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        array_at(c, "/securityContext/capabilities/drop"),
        &[Value::from("ALL")]
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c.pointer(&format!("/resources/{kind}/{resource}"))
                    .is_some(),
                "resources.{kind}.{resource}"
            );
        }
    }

    // Volumes and secret references point at objects and keys that exist.
    let configmap = one(&objects, "ConfigMap");
    let secret = one(&objects, "Secret");
    let volumes = array_at(sts, "/spec/template/spec/volumes");
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| str_at(v, "/name") == name)
            .unwrap_or_else(|| panic!("volume {name}"))
    };
    assert_eq!(
        str_at(volume("config"), "/configMap/name"),
        str_at(configmap, "/metadata/name")
    );
    let accounts = volume("accounts");
    assert_eq!(
        str_at(accounts, "/secret/secretName"),
        str_at(secret, "/metadata/name")
    );
    for item in array_at(accounts, "/secret/items") {
        assert!(secret
            .pointer(&format!("/stringData/{}", str_at(item, "/key")))
            .is_some());
    }
    for e in array_at(c, "/env") {
        if let Some(reference) = e.pointer("/valueFrom/secretKeyRef") {
            assert_eq!(str_at(reference, "/name"), str_at(secret, "/metadata/name"));
            assert!(secret
                .pointer(&format!("/stringData/{}", str_at(reference, "/key")))
                .is_some());
        }
    }
    for mount in array_at(c, "/volumeMounts") {
        volume(str_at(mount, "/name"));
    }
    let args = strings_at(c, "/args");
    assert_eq!(args, ["run", "-c", "/etc/voxsig-bridge/config.toml"]);
    let config_mount = array_at(c, "/volumeMounts")
        .iter()
        .find(|m| str_at(m, "/name") == "config")
        .unwrap();
    assert_eq!(str_at(config_mount, "/mountPath"), args[2]);
    assert!(configmap
        .pointer(&format!("/data/{}", str_at(config_mount, "/subPath")))
        .is_some());
}

#[test]
fn service_servicemonitor_and_pdb_select_the_pods() {
    let objects = k8s_objects();
    let sts = one(&objects, "StatefulSet");
    let pod_labels = string_map(sts, "/spec/template/metadata/labels");

    let service = one(&objects, "Service");
    assert_eq!(str_at(service, "/spec/clusterIP"), "None", "headless");
    assert!(selects(&string_map(service, "/spec/selector"), &pod_labels));
    let port = array_at(service, "/spec/ports")
        .iter()
        .find(|p| str_at(p, "/name") == "metrics")
        .expect("a port named metrics");
    assert_eq!(port.pointer("/port"), Some(&Value::from(9898)));
    let target = port.pointer("/targetPort").unwrap();
    assert!(target == "metrics" || target == 9898);

    let monitor = one(&objects, "ServiceMonitor");
    assert_eq!(str_at(monitor, "/apiVersion"), "monitoring.coreos.com/v1");
    let service_labels = string_map(service, "/metadata/labels");
    assert!(selects(
        &string_map(monitor, "/spec/selector/matchLabels"),
        &service_labels
    ));
    let endpoints = array_at(monitor, "/spec/endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(str_at(endpoint, "/port"), "metrics");
        assert_eq!(str_at(endpoint, "/path"), "/metrics");
    }
    // The alerts match job="voxsig-bridge": the ServiceMonitor's default job label is the
    // Service's name.
    assert_eq!(str_at(service, "/metadata/name"), "voxsig-bridge");
    assert!(monitor.pointer("/spec/jobLabel").is_none());

    if let Some(pdbs) = objects.get("PodDisruptionBudget") {
        for pdb in pdbs {
            assert!(selects(
                &string_map(pdb, "/spec/selector/matchLabels"),
                &pod_labels
            ));
        }
    }
}

#[test]
fn kubernetes_config_loads_with_the_bridge_config_loader() {
    let objects = k8s_objects();
    let configmap = one(&objects, "ConfigMap");
    let secret = one(&objects, "Secret");
    let sts = one(&objects, "StatefulSet");
    let c = bridge_container(sts);

    let mut config = voxsig_bridge::Config::from_toml(str_at(configmap, "/data/config.toml"))
        .expect("configmap config.toml loads");
    // accounts_file is where the Secret's accounts.toml is mounted.
    let accounts_mount = array_at(c, "/volumeMounts")
        .iter()
        .find(|m| str_at(m, "/name") == "accounts")
        .unwrap();
    let expected = Path::new(str_at(accounts_mount, "/mountPath")).join("accounts.toml");
    assert_eq!(config.accounts_file.as_deref(), Some(expected.as_path()));
    assert_eq!(config.metrics.listen.to_string(), "0.0.0.0:9898");

    let accounts = Scratch::new(
        "k8s-accounts.toml",
        str_at(secret, "/stringData/accounts.toml"),
    );
    config.accounts_file = Some(accounts.0.clone());
    let settings = config.validate().expect("the k8s config validates");
    assert_eq!(settings.accounts.len(), 3);
    assert_eq!(settings.sink.kind(), "mqtt");
    // The sink password comes from the env var the StatefulSet sets from the Secret.
    let text = str_at(configmap, "/data/config.toml");
    assert!(text.contains(r#"password = { env = "MQTT_PASSWORD" }"#));
    env_var(c, "MQTT_PASSWORD");
    // Memory: the buffer's byte bound stays well under the container's memory limit.
    let limit = str_at(c, "/resources/limits/memory");
    let limit_mib: usize = limit
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .expect("memory limit in Mi");
    assert!(settings.config.buffer.max_bytes <= limit_mib * 1024 * 1024 / 4);
}

// ----------------------------------------------------------------------------------------------
// Docker compose.

fn compose() -> Value {
    yaml_doc(&deploy().join("docker-compose.yml"))
}

/// `${NAME:-default}` becomes `default`, `${NAME}` becomes the empty string.
fn compose_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A service's bind mounts (host path relative to deploy/, container path).
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    let Some(volumes) = service.pointer("/volumes").and_then(Value::as_array) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| {
            let spec = compose_defaults(v.as_str().expect("short volume syntax"));
            let mut parts = spec.split(':');
            let source = parts.next().unwrap().to_owned();
            let target = parts.next().expect("volume target").to_owned();
            (source.starts_with('.') || source.starts_with('/'))
                .then(|| (deploy().join(source), target))
        })
        .collect()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose service {name}"))
}

/// The mount target of a file of deploy/, in a compose service.
fn mounted_at(service: &Value, file: &str) -> String {
    let file = deploy().join(file);
    bind_mounts(service)
        .into_iter()
        .find(|(source, _)| source.canonicalize().ok() == file.canonicalize().ok())
        .map(|(_, target)| target)
        .unwrap_or_else(|| panic!("{} is not mounted", file.display()))
}

#[test]
fn compose_services_reference_files_and_services_that_exist() {
    let compose = compose();
    let services = compose
        .pointer("/services")
        .and_then(Value::as_object)
        .expect("services");
    for name in [
        "bridge",
        "sim",
        "mosquitto",
        "kafka",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains_key(name), "service {name}");
    }
    let named_volumes: BTreeSet<&String> = compose
        .pointer("/volumes")
        .and_then(Value::as_object)
        .map(|v| v.keys().collect())
        .unwrap_or_default();
    let stages = dockerfile_stages();
    for (name, svc) in services {
        for (source, target) in bind_mounts(svc) {
            assert!(
                source.exists(),
                "{name}: mounts missing {} at {target}",
                source.display()
            );
        }
        for v in svc
            .pointer("/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let source = v.as_str().unwrap().split(':').next().unwrap();
            if !source.starts_with('.') && !source.starts_with('/') && !source.starts_with('$') {
                assert!(
                    named_volumes.contains(&source.to_owned()),
                    "{name}: volume {source}"
                );
            }
        }
        if let Some(build) = svc.pointer("/build") {
            let context = deploy().join(str_at(build, "/context"));
            assert!(
                context.join("Cargo.toml").is_file(),
                "{name}: context is the workspace"
            );
            assert!(context.join(str_at(build, "/dockerfile")).is_file());
            let target = str_at(build, "/target");
            assert!(
                stages.iter().any(|s| s.name.as_deref() == Some(target)),
                "{name}: no Dockerfile stage {target}"
            );
        }
        let depends: Vec<String> = match svc.pointer("/depends_on") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|d| d.as_str().unwrap().to_owned())
                .collect(),
            Some(Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        for d in depends {
            assert!(services.contains_key(&d), "{name} depends on unknown {d}");
        }
    }
    assert_eq!(
        array_at(service(&compose, "kafka"), "/profiles"),
        &[Value::from("kafka")]
    );

    // The bridge: both configs mounted where `command` looks, the accounts file where the configs
    // look, metrics published.
    let bridge = service(&compose, "bridge");
    let command = strings_at(bridge, "/command");
    assert_eq!(command[..2], ["run", "-c"]);
    let default_config = compose_defaults(command[2]);
    assert_eq!(mounted_at(bridge, "compose/config.toml"), default_config);
    let config_dir = Path::new(&default_config).parent().unwrap();
    assert_eq!(
        mounted_at(bridge, "compose/config.kafka.toml"),
        config_dir.join("config.kafka.toml").to_string_lossy()
    );
    assert_eq!(
        mounted_at(bridge, "compose/accounts.toml"),
        config_dir.join("accounts.toml").to_string_lossy()
    );
    assert!(array_at(bridge, "/ports").contains(&Value::from("9898:9898")));

    // Prometheus gets its config and the alerts; Grafana its provisioning and the dashboard.
    let prometheus = service(&compose, "prometheus");
    let config_path = mounted_at(prometheus, "prometheus/prometheus.yml");
    assert!(array_at(prometheus, "/command")
        .contains(&Value::from(format!("--config.file={config_path}"))));
    let alerts_path = mounted_at(prometheus, "prometheus/alerts.yml");
    assert_eq!(
        Path::new(&config_path).parent(),
        Path::new(&alerts_path).parent(),
        "alerts.yml sits beside prometheus.yml, as its relative rule_files entry expects"
    );
    let grafana = service(&compose, "grafana");
    assert_eq!(
        mounted_at(grafana, "grafana/provisioning/datasources"),
        "/etc/grafana/provisioning/datasources"
    );
    assert_eq!(
        mounted_at(grafana, "grafana/provisioning/dashboards"),
        "/etc/grafana/provisioning/dashboards"
    );
    let dashboard_at = mounted_at(grafana, "grafana/voxsig-bridge.json");
    let provider = yaml_doc(&deploy().join("grafana/provisioning/dashboards/voxsig-bridge.yml"));
    let providers = array_at(&provider, "/providers");
    assert!(providers
        .iter()
        .any(|p| Path::new(&dashboard_at).parent() == Some(Path::new(str_at(p, "/options/path")))));
    let datasources = yaml_doc(&deploy().join("grafana/provisioning/datasources/prometheus.yml"));
    let url = str_at(&array_at(&datasources, "/datasources")[0], "/url");
    assert_eq!(url, "http://prometheus:9090");
}

#[test]
fn compose_configs_load_with_the_bridge_config_loader() {
    let compose = compose();
    let bridge = service(&compose, "bridge");
    let url = compose_defaults(str_at(bridge, "/environment/VOXSIG_BRIDGE_SOURCE__URL"));
    let services = compose
        .pointer("/services")
        .and_then(Value::as_object)
        .unwrap();
    for (file, kind) in [("config.toml", "mqtt"), ("config.kafka.toml", "kafka")] {
        let path = deploy().join("compose").join(file);
        let mut config =
            voxsig_bridge::Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            config.source.url, url,
            "{file}: same default source as the compose file"
        );
        assert_eq!(
            config.accounts_file.as_deref(),
            Some(Path::new("/etc/voxsig-bridge/accounts.toml"))
        );
        assert_eq!(config.metrics.listen.to_string(), "0.0.0.0:9898");
        config.accounts_file = Some(deploy().join("compose/accounts.toml"));
        let settings = config
            .validate()
            .unwrap_or_else(|e| panic!("{file} does not validate: {e}"));
        assert_eq!(settings.sink.kind(), kind, "{file}");
        assert_eq!(settings.accounts.len(), 8, "{file}");
        // The broker is a compose service.
        let text = read(&path);
        let host = match kind {
            "mqtt" => "mosquitto",
            _ => "kafka",
        };
        assert!(text.contains(&format!("{host}:")), "{file} talks to {host}");
        assert!(services.contains_key(host));
    }
}

#[test]
fn compose_accounts_match_the_simulated_world() {
    let compose = compose();
    let args: BTreeMap<String, String> = array_at(service(&compose, "sim"), "/command")
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let arg = |name: &str| -> u64 {
        args.get(name)
            .unwrap_or_else(|| panic!("sim --{name}"))
            .parse()
            .unwrap()
    };
    let spec = voxsig_sim::WorldSpec {
        accounts: arg("accounts") as usize,
        users_per_account: arg("users-per-account") as usize,
        contacts_per_account: arg("contacts-per-account") as usize,
        conversations_per_contact: arg("conversations-per-contact") as usize,
        shared_users: 0,
        seed: arg("seed"),
    };
    let world = voxsig_sim::World::generate(&spec).expect("the world generates");
    let expected: BTreeSet<(u64, Option<u64>, String)> = world
        .bridge_accounts(&voxsig_sim::ExportOptions::default())
        .into_iter()
        .map(|a| (a.account_id, a.user_id, a.pubsub_token))
        .collect();

    let file: toml::Value = toml::from_str(&read(&deploy().join("compose/accounts.toml")))
        .expect("accounts.toml is TOML");
    let shipped: BTreeSet<(u64, Option<u64>, String)> = file["accounts"]
        .as_array()
        .expect("[[accounts]]")
        .iter()
        .map(|a| {
            (
                a["account_id"].as_integer().unwrap() as u64,
                a.get("user_id")
                    .and_then(toml::Value::as_integer)
                    .map(|u| u as u64),
                a["pubsub_token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        shipped, expected,
        "deploy/compose/accounts.toml must be the sim world's user tokens (regenerate it)"
    );
}

#[test]
fn prometheus_config_scrapes_the_bridge_and_loads_the_alerts() {
    let config = yaml_doc(&deploy().join("prometheus/prometheus.yml"));
    assert_eq!(strings_at(&config, "/rule_files"), ["alerts.yml"]);
    let job = array_at(&config, "/scrape_configs")
        .iter()
        .find(|j| str_at(j, "/job_name") == "voxsig-bridge")
        .expect("a voxsig-bridge scrape job");
    let targets: Vec<&str> = array_at(job, "/static_configs")
        .iter()
        .flat_map(|s| strings_at(s, "/targets"))
        .collect();
    assert_eq!(targets, ["bridge:9898"]);
    assert!(compose().pointer("/services/bridge").is_some());
}

// ----------------------------------------------------------------------------------------------
// Grafana dashboard.

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

// ----------------------------------------------------------------------------------------------
// Alerts.

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
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

fn alert_rules() -> Vec<Value> {
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

// ----------------------------------------------------------------------------------------------
// Dockerfile.

/// One `FROM` stage and the instructions under it.
struct Stage {
    base: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = read(&deploy().join("Dockerfile"));
    // Join continuation lines, drop comments and blank lines.
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                other => panic!("unexpected FROM {other:?}"),
            };
            stages.push(Stage {
                base: words[0].to_owned(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((instruction, args));
        } else {
            assert_eq!(instruction, "ARG", "only ARG may precede the first FROM");
        }
    }
    stages
}

/// The last value of an instruction in a stage or the stages it is built on.
fn effective<'a>(stages: &'a [Stage], stage: &'a Stage, instruction: &str) -> Option<&'a str> {
    let own = stage
        .instructions
        .iter()
        .rev()
        .find(|(i, _)| i == instruction)
        .map(|(_, a)| a.as_str());
    own.or_else(|| {
        let parent = stages
            .iter()
            .find(|s| s.name.as_deref() == Some(&stage.base))?;
        effective(stages, parent, instruction)
    })
}

/// The external image a stage is ultimately built on.
fn root_of<'a>(stages: &'a [Stage], stage: &'a Stage) -> &'a str {
    match stages
        .iter()
        .find(|s| s.name.as_deref() == Some(&stage.base))
    {
        Some(parent) => root_of(stages, parent),
        None => &stage.base,
    }
}

fn json_array(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form {args}: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_non_root() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage");
    assert!(
        stages[0].base.starts_with("rust:"),
        "the first stage builds with the Rust image"
    );
    let runtime = stages.last().unwrap();
    assert_eq!(
        runtime.name.as_deref(),
        Some("runtime"),
        "runtime is the default target"
    );
    let names: BTreeSet<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    // The runtime descends from Debian slim, not from the toolchain.
    let root = root_of(&stages, runtime);
    assert!(root.starts_with("debian:"), "runtime base {root}");
    assert!(root.ends_with("-slim"), "runtime base {root}");

    for stage in &stages {
        for (instruction, args) in &stage.instructions {
            if instruction == "COPY" {
                if let Some(from) = args
                    .split_whitespace()
                    .find_map(|a| a.strip_prefix("--from="))
                {
                    assert!(names.contains(from), "COPY --from={from}: no such stage");
                }
            }
        }
    }
    // Every image stage (on Debian slim) runs as a non-root user, by number so Kubernetes'
    // runAsNonRoot can verify it.
    for stage in stages
        .iter()
        .filter(|s| root_of(&stages, s).starts_with("debian:"))
    {
        let user = effective(&stages, stage, "USER").unwrap_or("root");
        let uid = user.split(':').next().unwrap();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "stage {:?} runs as {user:?}",
            stage.name
        );
    }
    assert_eq!(
        json_array(effective(&stages, runtime, "ENTRYPOINT").unwrap()),
        ["voxsig-bridge"]
    );
    assert_eq!(
        json_array(effective(&stages, runtime, "CMD").unwrap()),
        ["run", "-c", "/etc/voxsig-bridge/config.toml"]
    );
    assert_eq!(effective(&stages, runtime, "EXPOSE"), Some("9898"));
    let healthcheck = effective(&stages, runtime, "HEALTHCHECK").expect("HEALTHCHECK");
    assert!(healthcheck.contains("/healthz") && healthcheck.contains("9898"));
    let env = effective(&stages, runtime, "ENV").unwrap_or("");
    assert!(env.contains("VOXSIG_BRIDGE_METRICS__LISTEN=0.0.0.0:9898"));

    // Every workspace member is in the build context and copied into the toolchain stage.
    let workspace: toml::Value = toml::from_str(&read(&repo().join("Cargo.toml"))).unwrap();
    let copies: Vec<&str> = stages
        .iter()
        .flat_map(|s| &s.instructions)
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a.as_str())
        .collect();
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for member in workspace["workspace"]["members"].as_array().unwrap() {
        let top = member.as_str().unwrap().split('/').next().unwrap();
        assert!(
            copies
                .iter()
                .any(|c| c.split_whitespace().next() == Some(top)),
            "the Dockerfile does not COPY {top}"
        );
        assert!(
            ignore.lines().any(|l| l.trim() == format!("!{top}/")),
            "Dockerfile.dockerignore excludes {top}/"
        );
    }
    // Files compiled in with include_str!/include_bytes! are inside the copied directories.
    let copied: Vec<PathBuf> = copies
        .iter()
        .filter_map(|c| c.split_whitespace().next())
        .filter(|c| !c.starts_with("--"))
        .map(|c| repo().join(c))
        .collect();
    for path in files_under(&repo().join("crates")) {
        if path.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let text = read(&path);
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let included = &rest[..rest.find('"').unwrap()];
                let resolved = path.parent().unwrap().join(included).canonicalize();
                let resolved =
                    resolved.unwrap_or_else(|e| panic!("{}: {included}: {e}", path.display()));
                assert!(
                    copied.iter().any(|c| resolved.starts_with(c)),
                    "{} includes {included}, outside what the Dockerfile copies",
                    path.display()
                );
            }
        }
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        assert!(ignore.lines().any(|l| l.trim() == format!("!{file}")));
    }
}
