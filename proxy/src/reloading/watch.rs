//! File-change triggers: inotify on the *directories* of watched files.
//!
//! Watching directories rather than files is what makes every way of
//! replacing a file visible: an editor's rename-over, `mv` into place, a
//! Kubernetes-style `..data` symlink swap, delete-then-create. The watcher
//! only says "something changed"; the reloader waits for the directory to
//! settle, then reloads and compares fingerprints, so noise costs a cheap
//! no-op and never a swap.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watches alive; dropping it removes them.
#[derive(Debug)]
pub(super) struct DirWatcher {
    _watcher: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
}

impl DirWatcher {
    /// Watches the directories holding `files`; each relevant event sends
    /// a unit on `changed` (dropped when one is already pending). Events
    /// on `ignore` (our own audit log) are skipped.
    pub(super) fn start(
        files: &[PathBuf],
        ignore: PathBuf,
        changed: mpsc::Sender<()>,
    ) -> notify::Result<Self> {
        let dirs = directories(files);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if is_change(&event.kind) && event.paths.iter().any(|p| p != &ignore) {
                    let _ = changed.try_send(());
                }
            })?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self {
            _watcher: watcher,
            dirs,
        })
    }

    pub(super) fn dirs(&self) -> &BTreeSet<PathBuf> {
        &self.dirs
    }
}

/// The set of directories holding `files`.
pub(super) fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => Path::new(".").to_owned(),
        })
        .collect()
}

/// Reads (open, close-without-write) are not changes: mtlsd reading its
/// own files must not trigger another reload.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
