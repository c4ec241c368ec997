//! The audit log: one JSON line per reload attempt, appended and flushed,
//! never truncated by mtlsd.
//!
//! It answers "what changed in the TLS material, when, why, and did it
//! work?" after the fact, so each line names the trigger, the generation,
//! every item's old and new SHA-256 fingerprint, the result and the reason.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::ReloadOutcome;

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    outcome: &'a ReloadOutcome,
}

impl AuditLog {
    /// Opens (creating if needed, mode 0600) `path` for appending. The
    /// parent directory is created (mode 0700) if missing.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and pushes it to disk. A failure is logged, not
    /// fatal: an unwritable audit log must not stop rotations.
    pub fn record(&mut self, outcome: &ReloadOutcome) {
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            outcome,
        };
        let result = serde_json::to_vec(&line)
            .map_err(std::io::Error::other)
            .and_then(|mut bytes| {
                bytes.push(b'\n');
                self.file.write_all(&bytes)?;
                self.file.sync_data()
            });
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }
}
