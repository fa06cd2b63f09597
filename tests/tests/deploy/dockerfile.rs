//! The Dockerfile is multi-stage and runs as non-root.

use crate::files::{deploy, files_under, read, repo};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// One `FROM` stage and the instructions under it.
pub(crate) struct Stage {
    base: String,
    pub(crate) name: Option<String>,
    instructions: Vec<(String, String)>,
}

pub(crate) fn dockerfile_stages() -> Vec<Stage> {
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
pub(crate) fn effective<'a>(
    stages: &'a [Stage],
    stage: &'a Stage,
    instruction: &str,
) -> Option<&'a str> {
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
pub(crate) fn root_of<'a>(stages: &'a [Stage], stage: &'a Stage) -> &'a str {
    match stages
        .iter()
        .find(|s| s.name.as_deref() == Some(&stage.base))
    {
        Some(parent) => root_of(stages, parent),
        None => &stage.base,
    }
}

pub(crate) fn json_array(args: &str) -> Vec<String> {
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
