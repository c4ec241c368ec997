//! Expiry events: one structured log line when a certificate enters a
//! state that needs attention, repeated at `expiry.repeat` while it stays
//! there — never one per connection.
//!
//! Covers the identity certificate, every CA of every trust bundle, and
//! the latest certificate each inventory host presented to us.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mtlsd_expiry::{CertFacts, ExpiryState, Fingerprint};
use tokio_util::sync::CancellationToken;

use crate::state::DaemonState;

/// Evaluates certificate states every `expiry.check_interval` until `stop`.
pub async fn run(state: Arc<DaemonState>, stop: CancellationToken) {
    let mut reported = Reported::default();
    loop {
        reported.check(&state, SystemTime::now(), Instant::now());
        let interval = state.expiry_config().check_interval;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// The last state reported per certificate, and when.
#[derive(Debug, Default)]
struct Reported(HashMap<Fingerprint, (ExpiryState, Instant)>);

struct Subject<'a> {
    kind: &'static str,
    /// Trust domain, or the peer's inventory host.
    owner: &'a str,
    /// Where it came from: a file, or "peer".
    source: String,
    facts: &'a CertFacts,
}

impl Reported {
    fn check(&mut self, state: &DaemonState, now: SystemTime, tick: Instant) {
        let reporting = state.reporting();
        let config = reporting.expiry;
        let generation = state.store.current();
        let identity = generation.identity();
        let peers = state.peers.current(now, reporting.peers.forget_after);
        let mut subjects = vec![Subject {
            kind: "identity",
            owner: &identity.spec().trust_domain,
            source: identity.spec().cert.display().to_string(),
            facts: identity.leaf(),
        }];
        for (domain, bundle) in generation.bundles() {
            for ca in bundle.cas() {
                subjects.push(Subject {
                    kind: "ca",
                    owner: domain,
                    source: ca.path.display().to_string(),
                    facts: &ca.facts,
                });
            }
        }
        for peer in &peers {
            subjects.push(Subject {
                kind: "peer",
                owner: &peer.host,
                source: "peer".to_owned(),
                facts: &peer.latest,
            });
        }

        let mut seen = Vec::new();
        for subject in subjects {
            let current = ExpiryState::of(subject.facts, now, config.windows);
            let fingerprint = subject.facts.fingerprint;
            seen.push(fingerprint);
            if !current.needs_attention() {
                self.0.remove(&fingerprint);
                continue;
            }
            let due = match self.0.get(&fingerprint) {
                Some((last, at)) => *last != current || tick.duration_since(*at) >= config.repeat,
                None => true,
            };
            if due {
                emit(&subject, current);
                self.0.insert(fingerprint, (current, tick));
            }
        }
        // Forget certificates that are no longer loaded or seen.
        self.0.retain(|fp, _| seen.contains(fp));
    }
}

fn emit(subject: &Subject<'_>, state: ExpiryState) {
    let facts = subject.facts;
    let not_after = humantime::format_rfc3339_seconds(facts.not_after).to_string();
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                state = state.as_str(),
                kind = subject.kind,
                owner = subject.owner,
                source = %subject.source,
                subject = %facts.subject,
                serial = %facts.serial_hex,
                not_after = %not_after,
                "certificate needs attention"
            )
        };
    }
    match state {
        ExpiryState::Warning => event!(warn),
        _ => event!(error),
    }
}
