//! Bridge configuration files for tests that run the binary: a `c.toml` in its own temporary
//! directory, and the sim's accounts as the bridge reads them.

use std::path::{Path, PathBuf};
use voxsig_sim::{ExportOptions, Sim};

/// A temporary directory holding a bridge config file `c.toml` (removed on drop).
pub struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// An empty directory; [`ConfigFile::write`] fills `c.toml`.
    pub fn new() -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        ConfigFile { dir, path }
    }

    /// A directory with `c.toml` holding `toml`.
    pub fn with(toml: impl AsRef<str>) -> ConfigFile {
        let file = ConfigFile::new();
        file.write(toml);
        file
    }

    /// (Re)writes `c.toml`.
    pub fn write(&self, toml: impl AsRef<str>) {
        std::fs::write(&self.path, toml.as_ref()).expect("config written");
    }

    /// The config file, for `-c`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its directory, for files beside it (outputs, token files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile::new()
    }
}

/// The sim's subscriptions: every pubsub token (to look for in logs) and the `[[accounts]]`
/// tables of a bridge config.
pub fn sim_accounts(sim: &Sim) -> (Vec<String>, String) {
    let world = sim.world();
    let tokens = world
        .bridge_accounts(&ExportOptions::default())
        .into_iter()
        .map(|a| a.pubsub_token)
        .collect();
    (tokens, world.bridge_config_toml(&ExportOptions::default()))
}
