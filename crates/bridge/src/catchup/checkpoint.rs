//! The catch-up checkpoint in `<state.dir>/checkpoints/catchup.json`: per account the time of
//! the last event received and the highest message id published, overall and per conversation.
//! Written atomically (a temporary file, fsync, rename) at most once a second; read at start so
//! a restart resumes where the last run stopped.

use super::ledger::AccountCheckpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file format's version.
const VERSION: u32 = 1;

/// The largest checkpoint file read (a bigger one is refused as not ours).
const MAX_BYTES: u64 = 512 * 1024 * 1024;

/// What is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The format version.
    pub version: u32,
    /// When it was written (Unix ms).
    pub written_ms: i64,
    /// Per account.
    pub accounts: BTreeMap<u64, AccountCheckpoint>,
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading, writing or renaming failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a checkpoint of this version.
    #[error("{path}: not a catch-up checkpoint: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The checkpoint file under a state directory.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// `<state_dir>/checkpoints/catchup.json`.
    pub fn in_dir(state_dir: &Path) -> Self {
        CheckpointFile {
            path: state_dir.join("checkpoints").join("catchup.json"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads it; `Ok(None)` when there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let invalid = |problem: String| CheckpointError::Invalid {
            path: self.path.clone(),
            problem,
        };
        if meta.len() > MAX_BYTES {
            return Err(invalid(format!("{} bytes is too large", meta.len())));
        }
        let text = std::fs::read(&self.path).map_err(io)?;
        let checkpoint: Checkpoint =
            serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if checkpoint.version != VERSION {
            return Err(invalid(format!(
                "version {} (this bridge reads {VERSION})",
                checkpoint.version
            )));
        }
        Ok(Some(checkpoint))
    }

    /// Writes it atomically: readers see the old file or the new one, never half of one.
    pub fn store(
        &self,
        written_ms: i64,
        accounts: BTreeMap<u64, AccountCheckpoint>,
    ) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let checkpoint = Checkpoint {
            version: VERSION,
            written_ms,
            accounts,
        };
        let bytes = serde_json::to_vec(&checkpoint).map_err(|e| CheckpointError::Invalid {
            path: self.path.clone(),
            problem: e.to_string(),
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = CheckpointFile::in_dir(dir.path());
        assert!(file.load().unwrap().is_none());
        let mut accounts = BTreeMap::new();
        accounts.insert(
            7,
            AccountCheckpoint {
                last_event_ms: 99,
                high: Some(5),
                conversations: [(1, 5)].into_iter().collect(),
            },
        );
        file.store(1000, accounts.clone()).unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back.accounts, accounts);
        assert_eq!(back.written_ms, 1000);
        assert!(!file.path().with_extension("json.tmp").exists());
    }

    #[test]
    fn hostile_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let file = CheckpointFile::in_dir(dir.path());
        std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        for body in [
            &b""[..],
            b"\0\0\0",
            b"{\"version\":2,\"written_ms\":0,\"accounts\":{}}",
            b"{\"version\":1,\"written_ms\":0,\"accounts\":{\"x\":{}}}",
            b"[1,2,3]",
        ] {
            std::fs::write(file.path(), body).unwrap();
            let err = file.load().unwrap_err();
            assert!(matches!(err, CheckpointError::Invalid { .. }), "{err}");
        }
    }
}
