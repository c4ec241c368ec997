//! Hot reload: one task that owns "what is running" and changes it only
//! through complete, validated generations.
//!
//! Every trigger — SIGHUP, a file change, the periodic timer, `mtlsd
//! reload` via the admin endpoint — becomes a request to the [`Reloader`]
//! task, so attempts never overlap. An attempt re-reads the config file and
//! all material, validates everything as start-up does, builds the complete
//! next generation (TLS configs included), binds any new listener sockets,
//! and only then publishes in one atomic store. Anything wrong leaves the
//! running generation untouched. What changed is decided by a typed
//! [`diff`] over everything a generation holds (identity, bundles, CRLs,
//! the inventory's content, every config section); nothing changed is a
//! no-op, and file or timer triggers then leave no audit line. Every
//! trigger runs the same attempt and applies every change, including the
//! `reload.*` settings themselves; a SIGHUP or admin request is served at
//! once, even while a file change is settling.
//!
//! After a change that can narrow admission (a bundle, a CRL, the
//! inventory, a listener's roles or routes), every live connection is
//! re-judged by the new generation's policy ([`ConnectionRegistry`]).
//!
//! [`ConnectionRegistry`]: crate::connections::ConnectionRegistry

mod audit;
mod builder;
pub mod diff;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mtlsd_expiry::Fingerprint;
use mtlsd_reload::Generation;

pub use crate::reload_report::{Applies, Item, ItemChange, ReloadOutcome, ReloadResult, Trigger};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use audit::AuditLine;
pub use audit::AuditLog;

use crate::config::{Config, ConfigError, KeySource, ListenerConfig};
use crate::error_chain::WithCauses;
use crate::state::{BoundListener, DaemonState};

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

/// Why an attempt was rejected before anything changed. The outcome's
/// `reason` is its message with its causes (what operators read in the
/// log, the audit line, `/status` and `mtlsd reload`).
#[derive(Debug, thiserror::Error)]
enum Rejection {
    /// Boxed: the config crate's error is large.
    #[error(transparent)]
    Config(Box<ConfigError>),
    #[error(transparent)]
    Material(#[from] mtlsd_reload::MaterialErrors),
    /// As at start-up: a new listener's address is taken.
    #[error("listener '{name}': cannot listen on {addr}")]
    Bind {
        name: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The builder thread gave no answer.
    #[error("{step} failed")]
    TaskFailed {
        step: &'static str,
        #[source]
        source: builder::BuilderGone,
    },
}

impl From<ConfigError> for Rejection {
    fn from(error: ConfigError) -> Self {
        Self::Config(Box::new(error))
    }
}

/// Owns the running configuration, the bound listeners and the audit log.
pub struct Reloader {
    state: Arc<DaemonState>,
    config: Config,
    /// The fingerprint of the config file the last attempt read: automatic
    /// triggers audit a pending restart only when the file changed again.
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
    /// Where files are read and generations built.
    builder: builder::Builder,
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
    ) -> std::io::Result<Self> {
        let builder = builder::Builder::spawn()?;
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
            builder,
        };
        reloader.watcher = reloader.start_watcher(reloader.changed_tx.clone());
        let current = reloader.state.store.current();
        let sections = reloader.config.sections();
        let startup = ReloadOutcome {
            trigger: Trigger::Startup,
            result: ReloadResult::Applied,
            generation: current.number(),
            reason: None,
            items: diff::diff(
                None,
                &BTreeMap::new(),
                (&current, &sections),
                &BTreeSet::new(),
            ),
            refused: Vec::new(),
            closing: 0,
        };
        // Nothing is served yet: written here, before the daemon is ready.
        if let Some(line) = reloader.finish(&startup) {
            line.write();
        }
        Ok(reloader)
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
        let mut timer = self.config.reload.interval.map(interval_after_one_period);
        // A file change is reloaded once no event has arrived for `settle`
        // (bounded, so a file rewritten forever still gets reloaded).
        let mut settle_until: Option<tokio::time::Instant> = None;
        let mut settle_give_up: Option<tokio::time::Instant> = None;
        // A rejected file-triggered reload is retried: the change may have
        // been half-written (certificate before key).
        let mut retries_left = 0u32;
        let mut retry_at: Option<tokio::time::Instant> = None;

        loop {
            let settle_at = match (settle_until, settle_give_up) {
                (Some(quiet), Some(limit)) => Some(quiet.min(limit)),
                _ => None,
            };
            let trigger = tokio::select! {
                () = stop.cancelled() => break,
                request = requests.recv() => {
                    // Served at once, even while a file change settles.
                    let Some(request) = request else { break };
                    let outcome = self.attempt(request.trigger).await;
                    if let Some(reply) = request.reply {
                        let _ = reply.send(outcome);
                    }
                    self.refresh_triggers(&mut watcher, &mut timer, &changed_tx);
                    continue;
                }
                Some(()) = changed_rx.recv() => {
                    let now = tokio::time::Instant::now();
                    settle_until = Some(now + self.config.reload.settle);
                    settle_give_up.get_or_insert(now + self.config.reload.settle * 20);
                    continue;
                }
                () = sleep_until(settle_at) => {
                    settle_until = None;
                    settle_give_up = None;
                    retries_left = 3;
                    Trigger::Inotify
                }
                () = sleep_until(retry_at) => {
                    retry_at = None;
                    Trigger::Inotify
                }
                _ = tick(&mut timer) => Trigger::Timer,
            };
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
            self.refresh_triggers(&mut watcher, &mut timer, &changed_tx);
        }
    }

    /// Applies the `reload.*` settings now in force to the file watcher
    /// and the periodic timer, whatever triggered the attempt that set them.
    fn refresh_triggers(
        &self,
        watcher: &mut Option<watch::DirWatcher>,
        timer: &mut Option<tokio::time::Interval>,
        changed: &mpsc::Sender<()>,
    ) {
        let dirs = watch::directories(&self.config.watched_files());
        if watcher.is_some() != self.config.reload.watch
            || watcher.as_ref().is_some_and(|w| w.dirs() != &dirs)
        {
            *watcher = None; // stop the old one before starting its successor
            *watcher = self.start_watcher(changed.clone());
        }
        if timer.as_ref().map(|t| t.period()) != self.config.reload.interval {
            *timer = self.config.reload.interval.map(interval_after_one_period);
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
            crate::notify::systemd(&states);
        }
        let outcome = self.try_attempt(trigger).await;
        if notify_systemd {
            crate::notify::systemd(&[sd_notify::NotifyState::Ready]);
        }
        if let Some(line) = self.finish(&outcome) {
            // On the builder's thread, which is idle now that the attempt
            // is over; awaited, so the line is on disk when the answer to
            // `mtlsd reload` is sent, and lines stay in order.
            if self.builder.run(move || line.write()).await.is_err() {
                tracing::error!(
                    path = %self.audit.path().display(),
                    "the audit line of this reload was not written: the builder thread is gone"
                );
            }
        }
        outcome
    }

    async fn try_attempt(&mut self, trigger: Trigger) -> ReloadOutcome {
        let current = self.state.store.current();
        let rejected = |why: Rejection, refused: Vec<String>| ReloadOutcome {
            trigger,
            result: ReloadResult::Rejected,
            generation: current.number(),
            reason: Some(WithCauses(&why).to_string()),
            items: Vec::new(),
            refused,
            closing: 0,
        };

        // Reading files, parsing and building TLS configs block: with one
        // runtime worker (the default), on the runtime they would stall
        // every connection for the length of the build.
        let source = self.config.source.clone();
        let env = self.env.clone();
        let read = self
            .builder
            .run(move || {
                let text =
                    std::fs::read_to_string(&source).map_err(|source_error| ConfigError::Read {
                        path: source.clone(),
                        source: source_error,
                    })?;
                let fingerprint = Fingerprint::of(text.as_bytes());
                Config::parse(&source, &text, env)
                    .map(|parsed| (parsed, fingerprint))
                    .map_err(Rejection::from)
            })
            .await
            .unwrap_or_else(|source| {
                Err(Rejection::TaskFailed {
                    step: "reading the configuration",
                    source,
                })
            });
        let (parsed, config_fingerprint) = match read {
            Ok(read) => read,
            Err(reason) => return rejected(reason, Vec::new()),
        };
        let file_changed = self.config_fingerprint != Some(config_fingerprint);
        self.config_fingerprint = Some(config_fingerprint);
        let change = diff::ConfigChange::new(&self.config, parsed);
        let refused: Vec<String> = change.refused.iter().map(|(_, m)| m.clone()).collect();
        let restart = change.restart_sections();

        let spec = change.effective.material_spec();
        let previous = current.clone();
        let built = self
            .builder
            .run(move || Generation::load_after(&spec, SystemTime::now(), Some(&previous)))
            .await;
        let next = match built {
            Ok(Ok(next)) => next,
            Ok(Err(problems)) => return rejected(problems.into(), refused),
            Err(source) => {
                let step = "building the generation";
                return rejected(Rejection::TaskFailed { step, source }, refused);
            }
        };
        let items = change.items(Some(&current), &next);
        let next_config = change.effective;
        let live_changed = items.iter().any(|i| i.applies == Applies::Live);
        let restart_result = |generation: u64, closing: usize| ReloadOutcome {
            trigger,
            result: if restart.is_empty() {
                ReloadResult::Applied
            } else {
                ReloadResult::RestartRequired
            },
            generation,
            reason: None,
            items: items.clone(),
            refused: refused.clone(),
            closing,
        };
        if !live_changed {
            let mut outcome = restart_result(current.number(), 0);
            if restart.is_empty() {
                outcome.result = ReloadResult::Unchanged;
            } else if !file_changed && !trigger.explicit() {
                // Still waiting for the same restart: nothing new to say.
                outcome.result = ReloadResult::Unchanged;
            }
            return outcome;
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
                Err(source) => {
                    let why = Rejection::Bind {
                        name: listener.name.clone(),
                        addr: listener.listen,
                        source,
                    };
                    let mut outcome = rejected(why, refused);
                    outcome.items = items;
                    return outcome;
                }
            }
        }

        let trust_changed = current.trust_fingerprint() != next.trust_fingerprint();
        // Stop what goes away first so it cannot accept into a generation
        // that no longer has its TLS config.
        for name in &plan.remove {
            if let Some(bound) = self.bound.remove(name) {
                bound.stop.cancel();
                self.state.forget_listener(name);
                tracing::info!(listener = %name, "listener removed; its open connections may finish within reload.drain_grace");
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

        // Whatever narrowed — a bundle, a CRL, the inventory, a listener's
        // roles or routes — every live connection is judged again by the
        // policy now in force.
        let closing = if trust_changed {
            self.state
                .connections
                .rejudge(&self.state.store.current(), next_config.reload.drain_grace)
        } else {
            0
        };
        for setting in next_config.insecure_settings() {
            tracing::warn!("{setting}");
        }
        if matches!(next_config.identity.key, KeySource::Token(_)) && single_threaded_runtime() {
            tracing::warn!(
                key = %next_config.identity.key,
                "this host's key is now in a token, but mtlsd started with a key file on its \
                 single-threaded runtime: each handshake's token signature holds every other \
                 connection until it is done; restart mtlsd to sign beside them"
            );
        }
        let current = self.state.store.current();
        if let Some(inventory) = current.inventory() {
            for warning in next_config.role_warnings(inventory) {
                tracing::warn!("{warning}");
            }
        }
        if let Some(reason) = current.own_revocation() {
            tracing::error!(
                cert = %next_config.identity.cert.display(),
                "{reason}; peers refuse this host: install a new certificate (mtlsd reports not ready until then)"
            );
        }
        self.config = next_config;
        restart_result(number, closing)
    }

    /// Everything an attempt ends with but the audit line's write: the
    /// line is returned, to be written off the runtime.
    fn finish(&mut self, outcome: &ReloadOutcome) -> Option<AuditLine> {
        self.metrics.observe(outcome);
        self.state.record_reload(outcome);
        self.state
            .set_reporting(crate::state::Reporting::of(&self.config));
        if let Some(inventory) = self.state.store.current().inventory() {
            self.state
                .peers
                .retain_hosts(|host| inventory.host(host).is_some());
        }
        let audited = outcome.trigger.explicit() || outcome.result != ReloadResult::Unchanged;
        let line = audited.then(|| self.audit.line(outcome));
        let changed: Vec<String> = outcome
            .items
            .iter()
            .filter(|i| i.applies == Applies::Live)
            .map(|i| i.item.to_string())
            .collect();
        let waiting: Vec<String> = outcome
            .items
            .iter()
            .filter(|i| i.applies == Applies::Restart)
            .map(|i| i.item.to_string())
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
            ReloadResult::RestartRequired => tracing::warn!(
                trigger = outcome.trigger.as_str(),
                generation = outcome.generation,
                changed = ?changed,
                restart_required = ?waiting,
                closing = outcome.closing,
                "reload applied what it could; a restart is required for the rest"
            ),
        }
        for refused in &outcome.refused {
            tracing::warn!(
                trigger = outcome.trigger.as_str(),
                "needs a restart: {refused}"
            );
        }
        line
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

/// A periodic timer whose first tick is one period from now.
fn interval_after_one_period(period: std::time::Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.reset();
    timer
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

/// Whether this reloader runs on tokio's single-threaded scheduler (one
/// worker and, at start, a key file: see `Prepared::single_threaded`).
fn single_threaded_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}
