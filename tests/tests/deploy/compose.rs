//! Docker compose: services reference files and services that exist, its configs load with
//! the bridge's own loader, its accounts match the simulated world, Prometheus scrapes the
//! bridge.

use crate::dockerfile::dockerfile_stages;
use crate::files::{deploy, read};
use crate::yaml::{array_at, str_at, strings_at, yaml_doc};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub(crate) fn compose() -> Value {
    yaml_doc(&deploy().join("docker-compose.yml"))
}

/// `${NAME:-default}` becomes `default`, `${NAME}` becomes the empty string.
pub(crate) fn compose_defaults(text: &str) -> String {
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
pub(crate) fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
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

pub(crate) fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .pointer(&format!("/services/{name}"))
        .unwrap_or_else(|| panic!("compose service {name}"))
}

/// The mount target of a file of deploy/, in a compose service.
pub(crate) fn mounted_at(service: &Value, file: &str) -> String {
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
