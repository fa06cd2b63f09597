//! Kubernetes: the kustomization's objects fit together (selectors, ports, probes, shard
//! variables, security) and its config loads with the bridge's own loader.

use crate::files::{deploy, files_under, read, yaml_files, Scratch};
use crate::yaml::{array_at, selects, str_at, string_map, strings_at, yaml_doc, yaml_docs};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every object of deploy/k8s (the kustomization's resources), by kind.
pub(crate) fn k8s_objects() -> BTreeMap<String, Vec<Value>> {
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

pub(crate) fn one<'a>(objects: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
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
pub(crate) fn bridge_container(statefulset: &Value) -> &Value {
    let containers = array_at(statefulset, "/spec/template/spec/containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

pub(crate) fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
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
