//! Telling systemd what the daemon is doing (`Type=notify`): READY once
//! every listener is bound, RELOADING around a reload, STOPPING on drain.
//! A shared leaf: the run command and the reloader both call it.

/// Sends `states` to systemd when running under it (NOTIFY_SOCKET set).
pub(crate) fn systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
