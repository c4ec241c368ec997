//! Hot reload: one task that owns "what is running" and changes it only
//! through complete, validated generations.
//!
//! Every trigger — SIGHUP, a file change, the periodic timer, `mtlsd
//! reload` via the admin endpoint — becomes a request to the [`Reloader`]
//! task, so attempts never overlap. An attempt re-reads the config file and
//! all material, validates everything as start-up does, builds the complete
//! next generation (TLS configs included), binds any new listener sockets,
//! and only then publishes in one atomic store. Anything wrong leaves the
//! running generation untouched. Identical material is a no-op: nothing is
//! swapped, and file or timer triggers leave no audit line.

mod audit;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mtlsd_expiry::Fingerprint;
use mtlsd_reload::Generation;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use audit::AuditLog;

use crate::config::{Config, ListenerConfig};
use crate::daemon::{BoundListener, DaemonState};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Startup,
    Sighup,
    Inotify,
    Timer,
    Admin,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Sighup => "sighup",
            Self::Inotify => "inotify",
            Self::Timer => "timer",
            Self::Admin => "admin",
        }
    }

    /// Explicit requests are always audited; automatic ones only when they
    /// change something or fail.
    fn explicit(self) -> bool {
        matches!(self, Self::Startup | Self::Sighup | Self::Admin)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Rejected,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Unchanged => "unchanged",
            Self::Rejected => "rejected",
        }
    }
}

/// One item's fingerprint before and after (absent = did not exist or
/// could not be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemChange {
    pub item: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// What one reload attempt did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    pub trigger: Trigger,
    pub result: ReloadResult,
    /// The generation in force after the attempt.
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub items: Vec<ItemChange>,
    /// Config changes that cannot be applied live, kept at their old values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Established connections scheduled to close because their peer no
    /// longer verifies.
    #[serde(skip_serializing_if = "is_zero")]
    pub closing: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl fmt::Display for ReloadOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (generation {})",
            self.result.as_str(),
            self.generation
        )?;
        if let Some(reason) = &self.reason {
            write!(f, ": {reason}")?;
        }
        for refused in &self.refused {
            write!(f, "\n  not applied: {refused}")?;
        }
        Ok(())
    }
}

/// A request to the reloader task.
#[derive(Debug)]
pub struct ReloadRequest {
    pub trigger: Trigger,
    pub reply: Option<oneshot::Sender<ReloadOutcome>>,
}

/// Reload counters, defined next to the code that counts them.
#[derive(Debug, Clone)]
pub struct ReloadMetrics {
    attempts: IntCounterVec,
    last_success: IntGauge,
    generation: IntGauge,
}

impl ReloadMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let attempts = IntCounterVec::new(
            Opts::new(
                "mtlsd_reload_attempts_total",
                "Reload attempts by trigger and result.",
            ),
            &["trigger", "result"],
        )?;
        let last_success = IntGauge::new(
            "mtlsd_reload_last_success_timestamp_seconds",
            "Unix time of the last reload that applied or confirmed material.",
        )?;
        let generation = IntGauge::new(
            "mtlsd_material_generation",
            "Number of the material generation in force (1 at start-up).",
        )?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(generation.clone()))?;
        Ok(Self {
            attempts,
            last_success,
            generation,
        })
    }

    fn observe(&self, outcome: &ReloadOutcome) {
        self.attempts
            .with_label_values(&[outcome.trigger.as_str(), outcome.result.as_str()])
            .inc();
        if outcome.result != ReloadResult::Rejected {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.last_success
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
        self.generation
            .set(i64::try_from(outcome.generation).unwrap_or(i64::MAX));
    }
}

/// Owns the running configuration, the bound listeners and the audit log.
pub struct Reloader {
    state: Arc<DaemonState>,
    config: Config,
    config_fingerprint: Option<Fingerprint>,
    bound: BTreeMap<String, BoundListener>,
    audit: AuditLog,
    metrics: ReloadMetrics,
    env: Vec<(String, String)>,
    /// Registered in `new`, before the daemon reports ready, so a change
    /// made right after start-up is never missed.
    watcher: Option<watch::DirWatcher>,
    changed_tx: mpsc::Sender<()>,
    changed_rx: mpsc::Receiver<()>,
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.state.store.current().number())
            .field("listeners", &self.bound.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub(crate) fn new(
        state: Arc<DaemonState>,
        config: Config,
        bound: BTreeMap<String, BoundListener>,
        audit: AuditLog,
        metrics: ReloadMetrics,
        env: Vec<(String, String)>,
    ) -> Self {
        let config_fingerprint = std::fs::read(&config.source)
            .ok()
            .map(|text| Fingerprint::of(&text));
        let (changed_tx, changed_rx) = mpsc::channel::<()>(1);
        let mut reloader = Self {
            state,
            config,
            config_fingerprint,
            bound,
            audit,
            metrics,
            env,
            watcher: None,
            changed_tx,
            changed_rx,
        };
        reloader.watcher = reloader.start_watcher(reloader.changed_tx.clone());
        let current = reloader.state.store.current();
        let startup = ReloadOutcome {
            trigger: Trigger::Startup,
            result: ReloadResult::Applied,
            generation: current.number(),
            reason: None,
            items: diff(None, None, Some(&current), reloader.config_fingerprint),
            refused: Vec::new(),
            closing: 0,
        };
        reloader.finish(&startup);
        reloader
    }

    /// Serves reload requests and file-change triggers until `stop`.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<ReloadRequest>,
        stop: CancellationToken,
    ) {
        let changed_tx = self.changed_tx.clone();
        let mut changed_rx = std::mem::replace(&mut self.changed_rx, mpsc::channel(1).1);
        let mut watcher = self.watcher.take();
        let mut timer = self.config.reload.interval.map(tokio::time::interval);
        if let Some(timer) = &mut timer {
            timer.reset(); // the first tick is not immediate
        }
        // A rejected file-triggered reload is retried: the change may have
        // been half-written (certificate before key).
        let mut retries_left = 0u32;
        let mut retry_at: Option<tokio::time::Instant> = None;

        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => break,
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    let outcome = self.attempt(request.trigger).await;
                    if let Some(reply) = request.reply {
                        let _ = reply.send(outcome);
                    }
                    continue;
                }
                Some(()) = changed_rx.recv() => {
                    self.settle(&mut changed_rx).await;
                    retries_left = 3;
                    Trigger::Inotify
                }
                () = sleep_until(retry_at) => {
                    retry_at = None;
                    Trigger::Inotify
                }
                _ = tick(&mut timer) => Trigger::Timer,
            };
            let before = self.config.watched_files();
            let outcome = self.attempt(trigger).await;
            if trigger == Trigger::Inotify
                && outcome.result == ReloadResult::Rejected
                && retries_left > 0
            {
                retries_left -= 1;
                retry_at = Some(tokio::time::Instant::now() + self.config.reload.settle);
            } else if trigger == Trigger::Inotify {
                retries_left = 0;
            }
            if self.config.watched_files() != before
                || watcher.is_some() != self.config.reload.watch
            {
                watcher = self.start_watcher(changed_tx.clone());
            }
            if timer.as_ref().map(|t| t.period()) != self.config.reload.interval {
                timer = self.config.reload.interval.map(tokio::time::interval);
                if let Some(timer) = &mut timer {
                    timer.reset();
                }
            }
        }
    }

    /// Waits until no file event has arrived for the settle time (bounded,
    /// so a file rewritten forever still gets reloaded).
    async fn settle(&self, changed: &mut mpsc::Receiver<()>) {
        let settle = self.config.reload.settle;
        let give_up = tokio::time::Instant::now() + settle * 20;
        loop {
            let quiet = tokio::time::sleep(settle);
            tokio::select! {
                () = quiet => return,
                () = tokio::time::sleep_until(give_up) => return,
                Some(()) = changed.recv() => continue,
            }
        }
    }

    fn start_watcher(&self, changed: mpsc::Sender<()>) -> Option<watch::DirWatcher> {
        if !self.config.reload.watch {
            return None;
        }
        let files = self.config.watched_files();
        match watch::DirWatcher::start(&files, self.audit.path().to_owned(), changed) {
            Ok(watcher) => {
                tracing::debug!(dirs = ?watcher.dirs(), "watching for changes");
                Some(watcher)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch material directories; reload with SIGHUP");
                None
            }
        }
    }

    /// One validate-then-swap attempt.
    pub async fn attempt(&mut self, trigger: Trigger) -> ReloadOutcome {
        let notify_systemd = matches!(trigger, Trigger::Sighup | Trigger::Admin);
        if notify_systemd {
            let mut states = vec![sd_notify::NotifyState::Reloading];
            if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            crate::commands::notify_systemd(&states);
        }
        let outcome = self.try_attempt(trigger).await;
        if notify_systemd {
            crate::commands::notify_systemd(&[sd_notify::NotifyState::Ready]);
        }
        self.finish(&outcome);
        outcome
    }

    async fn try_attempt(&mut self, trigger: Trigger) -> ReloadOutcome {
        let current = self.state.store.current();
        let rejected = |reason: String, items: Vec<ItemChange>| ReloadOutcome {
            trigger,
            result: ReloadResult::Rejected,
            generation: current.number(),
            reason: Some(reason),
            items,
            refused: Vec::new(),
            closing: 0,
        };

        // Reading files, parsing and building TLS configs block: with one
        // runtime worker (the default), on the runtime they would stall
        // every connection for the length of the build.
        let source = self.config.source.clone();
        let env = self.env.clone();
        let read = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&source)
                .map_err(|e| format!("{}: cannot read: {e}", source.display()))?;
            let fingerprint = Fingerprint::of(text.as_bytes());
            Config::parse(&source, &text, env)
                .map(|parsed| (parsed, fingerprint))
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("reading the configuration failed: {e}")));
        let (parsed, config_fingerprint) = match read {
            Ok(read) => read,
            Err(reason) => return rejected(reason, Vec::new()),
        };
        let (next_config, refused) = self.config.apply_live(parsed);

        let spec = next_config.material_spec();
        let built =
            tokio::task::spawn_blocking(move || Generation::load(&spec, SystemTime::now())).await;
        let built = match built {
            Ok(built) => built,
            Err(e) => {
                let mut outcome =
                    rejected(format!("building the generation failed: {e}"), Vec::new());
                outcome.refused = refused;
                return outcome;
            }
        };
        let next = match built {
            Ok(next) => next,
            Err(problems) => {
                let mut outcome = rejected(problems.to_string(), Vec::new());
                outcome.refused = refused;
                return outcome;
            }
        };
        let items = diff(
            Some(&current),
            self.config_fingerprint,
            Some(&next),
            Some(config_fingerprint),
        );
        let material_same = items.iter().all(|i| i.old == i.new) && current.spec() == next.spec();
        if material_same && next_config == self.config {
            return ReloadOutcome {
                trigger,
                result: ReloadResult::Unchanged,
                generation: current.number(),
                reason: None,
                items,
                refused,
                closing: 0,
            };
        }

        // Bind every new socket before changing anything, so a taken port
        // rejects the whole attempt.
        let plan = ListenerPlan::new(&self.config, &next_config);
        let mut fresh = BTreeMap::new();
        for listener in &plan.bind {
            match crate::listener::bind(listener).await {
                Ok(socket) => {
                    fresh.insert(listener.name.clone(), socket);
                }
                Err(e) => {
                    let mut outcome = rejected(
                        format!(
                            "listener '{}': cannot listen on {}: {e}",
                            listener.name, listener.listen
                        ),
                        items,
                    );
                    outcome.refused = refused;
                    return outcome;
                }
            }
        }

        let trust_changed = items
            .iter()
            .any(|i| i.item.starts_with("trust_domain.") && i.old != i.new);
        // Stop what goes away first so it cannot accept into a generation
        // that no longer has its TLS config.
        for name in &plan.remove {
            if let Some(bound) = self.bound.remove(name) {
                bound.stop.cancel();
                self.state.forget_listener(name);
                tracing::info!(listener = %name, "listener removed; its open connections continue");
            }
        }
        let number = self.state.store.publish(next);
        for listener in plan.update {
            if let Some(bound) = self.bound.get(&listener.name) {
                bound.ctx.update(listener);
            }
        }
        for listener in plan.bind {
            let Some(socket) = fresh.remove(&listener.name) else {
                continue;
            };
            if let Some(old) = self.bound.remove(&listener.name) {
                // Same listener, new address: the old socket stops
                // accepting, its connections finish on their own.
                old.stop.cancel();
                old.ctx.update(listener.clone());
                let bound = self
                    .state
                    .spawn_listener(socket, old.ctx.clone(), &listener);
                self.bound.insert(listener.name.clone(), bound);
            } else {
                let ctx = self.state.new_context(listener.clone());
                let bound = self.state.spawn_listener(socket, ctx, &listener);
                self.bound.insert(listener.name.clone(), bound);
            }
        }

        let closing = if trust_changed {
            self.state
                .connections
                .revalidate(&self.state.store.current(), next_config.reload.drain_grace)
        } else {
            0
        };
        for setting in next_config.insecure_settings() {
            tracing::warn!("{setting}");
        }
        self.config = next_config;
        self.config_fingerprint = Some(config_fingerprint);
        ReloadOutcome {
            trigger,
            result: ReloadResult::Applied,
            generation: number,
            reason: None,
            items,
            refused,
            closing,
        }
    }

    fn finish(&mut self, outcome: &ReloadOutcome) {
        self.metrics.observe(outcome);
        self.state.record_reload(outcome);
        self.state.set_expiry_config(self.config.expiry);
        if let Some(inventory) = self.state.store.current().inventory() {
            self.state
                .peers
                .retain_hosts(|host| inventory.host(host).is_some());
        }
        let audited = outcome.trigger.explicit() || outcome.result != ReloadResult::Unchanged;
        if audited {
            self.audit.record(outcome);
        }
        let changed: Vec<&str> = outcome
            .items
            .iter()
            .filter(|i| i.old != i.new)
            .map(|i| i.item.as_str())
            .collect();
        match outcome.result {
            ReloadResult::Applied if outcome.trigger == Trigger::Startup => tracing::info!(
                generation = outcome.generation,
                audit_log = %self.audit.path().display(),
                "TLS material loaded"
            ),
            ReloadResult::Applied => tracing::info!(
                trigger = outcome.trigger.as_str(),
                generation = outcome.generation,
                changed = ?changed,
                closing = outcome.closing,
                "TLS material reloaded"
            ),
            ReloadResult::Unchanged if audited => tracing::info!(
                trigger = outcome.trigger.as_str(),
                generation = outcome.generation,
                "reload: nothing changed"
            ),
            ReloadResult::Unchanged => {}
            ReloadResult::Rejected => tracing::error!(
                trigger = outcome.trigger.as_str(),
                generation = outcome.generation,
                problems = outcome.reason.as_deref().unwrap_or(""),
                "reload rejected; keeping the current TLS material"
            ),
        }
        for refused in &outcome.refused {
            tracing::warn!(trigger = outcome.trigger.as_str(), "not applied: {refused}");
        }
    }
}

/// How the listener set changes between two configs.
struct ListenerPlan {
    /// New listeners, and existing ones whose address changed.
    bind: Vec<ListenerConfig>,
    /// Same address, other settings changed.
    update: Vec<ListenerConfig>,
    remove: Vec<String>,
}

impl ListenerPlan {
    fn new(old: &Config, next: &Config) -> Self {
        let old_by_name: BTreeMap<&str, &ListenerConfig> =
            old.listeners().map(|l| (l.name.as_str(), l)).collect();
        let next_names: BTreeSet<&str> = next.listeners().map(|l| l.name.as_str()).collect();
        let mut plan = Self {
            bind: Vec::new(),
            update: Vec::new(),
            remove: old_by_name
                .keys()
                .filter(|name| !next_names.contains(*name))
                .map(|name| (*name).to_owned())
                .collect(),
        };
        for listener in next.listeners() {
            match old_by_name.get(listener.name.as_str()) {
                None => plan.bind.push(listener.clone()),
                Some(old) if old.listen != listener.listen => plan.bind.push(listener.clone()),
                Some(old) if *old != listener => plan.update.push(listener.clone()),
                Some(_) => {}
            }
        }
        plan
    }
}

/// Old and new fingerprint of every item: the identity certificate, each
/// trust bundle, and the config file.
fn diff(
    old: Option<&Generation>,
    old_config: Option<Fingerprint>,
    new: Option<&Generation>,
    new_config: Option<Fingerprint>,
) -> Vec<ItemChange> {
    let show = |fp: Fingerprint| fp.to_hex();
    let mut items = vec![ItemChange {
        item: "identity".to_owned(),
        old: old.map(|g| show(g.identity().leaf().fingerprint)),
        new: new.map(|g| show(g.identity().leaf().fingerprint)),
    }];
    let domains: BTreeSet<&String> = old
        .iter()
        .chain(new.iter())
        .flat_map(|g| g.bundles().keys())
        .collect();
    for domain in domains {
        items.push(ItemChange {
            item: format!("trust_domain.{domain}"),
            old: old
                .and_then(|g| g.bundle(domain))
                .map(|b| show(b.fingerprint())),
            new: new
                .and_then(|g| g.bundle(domain))
                .map(|b| show(b.fingerprint())),
        });
    }
    items.push(ItemChange {
        item: "config".to_owned(),
        old: old_config.map(show),
        new: new_config.map(show),
    });
    items
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}
