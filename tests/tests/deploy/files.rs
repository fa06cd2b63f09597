//! Files of the repository and of `deploy/`.

use std::path::{Path, PathBuf};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

pub(crate) fn deploy() -> PathBuf {
    repo().join("deploy")
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
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

pub(crate) fn yaml_files() -> Vec<PathBuf> {
    files_under(&deploy())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect()
}

/// A scratch file, removed on drop.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str, contents: &str) -> Scratch {
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
