//! The audit log: one JSON line per reload attempt, appended and flushed,
//! never truncated by mtlsd.
//!
//! It answers "what changed in the TLS material, when, why, and did it
//! work?" after the fact, so each line names the trigger, the generation,
//! every item's old and new SHA-256 fingerprint, the result and the reason.
//!
//! A line is made on the runtime ([`AuditLog::line`]) and written
//! elsewhere ([`AuditLine::write`], on the generation builder's thread):
//! the write ends with `fdatasync`, which waits for the disk, and on the
//! runtime's one thread (the default) that wait held every connection.
//! Measured under load (issue 15): an unchanged SIGHUP on both sides of a
//! loaded pair slowed 26–35 calls above 1 ms per 20 reloads, against
//! 50–77 with the write on the runtime.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use super::ReloadOutcome;

#[derive(Debug)]
pub struct AuditLog {
    path: Arc<Path>,
    file: Arc<File>,
}

/// One line made and not yet written: [`Self::write`] it off the runtime.
#[derive(Debug)]
#[must_use = "a line is only on disk once written"]
pub struct AuditLine {
    path: Arc<Path>,
    file: Arc<File>,
    bytes: std::io::Result<Vec<u8>>,
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
            path: path.into(),
            file: Arc::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line for `outcome`, stamped now; nothing is written yet.
    pub fn line(&self, outcome: &ReloadOutcome) -> AuditLine {
        let line = Line {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            outcome,
        };
        let bytes = serde_json::to_vec(&line)
            .map(|mut bytes| {
                bytes.push(b'\n');
                bytes
            })
            .map_err(std::io::Error::other);
        AuditLine {
            path: self.path.clone(),
            file: self.file.clone(),
            bytes,
        }
    }
}

impl AuditLine {
    /// Appends the line and pushes it to disk: blocks until the disk has
    /// it. A failure is logged, not fatal: an unwritable audit log must
    /// not stop rotations.
    pub fn write(self) {
        let result = self.bytes.and_then(|bytes| {
            let mut file = &*self.file;
            file.write_all(&bytes)?;
            file.sync_data()
        });
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::fcntl::OFlag;

    use super::*;
    use crate::reload_report::{ReloadResult, Trigger};

    fn outcome() -> ReloadOutcome {
        ReloadOutcome {
            trigger: Trigger::Sighup,
            result: ReloadResult::Unchanged,
            generation: 7,
            reason: None,
            items: Vec::new(),
            refused: Vec::new(),
            closing: 0,
        }
    }

    /// What keeps the disk off the runtime: making a line does no I/O,
    /// and only `write` waits for the file. The log is a FIFO whose pipe
    /// is full, so any write to it blocks until the pipe is drained.
    #[test]
    fn a_line_is_made_without_io_and_only_write_waits_for_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let nonblocking = OFlag::O_NONBLOCK.bits();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(nonblocking)
            .open(&path)
            .unwrap();
        let log = AuditLog::open(&path).unwrap();
        let mut filler = OpenOptions::new()
            .write(true)
            .custom_flags(nonblocking)
            .open(&path)
            .unwrap();
        let mut filled = 0;
        loop {
            match filler.write(&[b'x'; 4096]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the pipe: {e}"),
            }
        }

        let (made_tx, made) = mpsc::channel();
        std::thread::spawn(move || made_tx.send(log.line(&outcome())).unwrap());
        let line = made
            .recv_timeout(Duration::from_secs(5))
            .expect("making a line waited for the file");

        let (written_tx, written) = mpsc::channel();
        std::thread::spawn(move || {
            line.write();
            written_tx.send(()).unwrap();
        });
        assert!(
            written.recv_timeout(Duration::from_millis(200)).is_err(),
            "the line was written into a full pipe"
        );
        // Drain the pipe: the write goes through.
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while written.try_recv().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never finished"
            );
            match reader.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("draining the pipe: {e}"),
            }
        }
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got[filled..]);
        assert!(text.ends_with('\n'), "{text:?}");
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["trigger"], "sighup", "{line}");
        assert_eq!(line["generation"], 7, "{line}");
    }
}
