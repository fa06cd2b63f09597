//! YAML, as JSON values (keys as strings; `<<` merge keys applied); every YAML file parses.

use crate::files::{read, yaml_files};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use yaml_rust2::{Yaml, YamlLoader};

pub(crate) fn yaml_to_json(yaml: &Yaml) -> Value {
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
pub(crate) fn yaml_docs(path: &Path) -> Vec<Value> {
    let docs = YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
    docs.iter().map(yaml_to_json).collect()
}

/// The single document of a YAML file.
pub(crate) fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {value}"))
}

pub(crate) fn array_at<'a>(value: &'a Value, pointer: &str) -> &'a Vec<Value> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{pointer} is not a list in {value}"))
}

/// A list of strings.
pub(crate) fn strings_at<'a>(value: &'a Value, pointer: &str) -> Vec<&'a str> {
    array_at(value, pointer)
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{pointer} holds a non-string"))
        })
        .collect()
}

/// A mapping of strings (labels, selectors) as a sorted map.
pub(crate) fn string_map(value: &Value, pointer: &str) -> BTreeMap<String, String> {
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
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

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
