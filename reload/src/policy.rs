//! The one admission policy: who may talk to a listener (or be dialled by
//! it), decided in one place.
//!
//! A peer is admitted on a use (a listener, or the admin endpoint) when
//! 1. its chain verifies against the use's trust bundle and that bundle's
//!    CRLs (and, for servers we dial, is valid for the name),
//! 2. its serial is not revoked in the inventory (for the issuing CA, when
//!    the entry names one),
//! 3. its SANs map to exactly one inventory host, and
//! 4. that host holds a role the use allows.
//!
//! The TLS verifiers call [`UsePolicy::admit`] during the handshake (and
//! the handshake code again for a resumed session, which skips them), the
//! reloader calls it for every live connection after a trust change, and
//! the gRPC/HTTP modes call [`UsePolicy::authorize_request`] on every
//! request — always against the generation in force, never a snapshot
//! taken when the connection was accepted. The role rule is written once,
//! in [`PeerPolicy::allows`].
//!
//! On gRPC and HTTP listeners a role refusal must be answered in the
//! protocol (PERMISSION_DENIED, 403), so the handshake there stops after
//! step 3; per request the route (or the listener's `allow_roles`)
//! decides. A live connection there still *qualifies* only while its host
//! holds a role that the listener or one of its routes admits.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use mtlsd_expiry::CertFacts;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::inventory::{InventoryHost, RoleInventory};
pub use crate::refusal::Refusal;
use crate::trust::{AuthUsage, ChainError, NameCheck, TrustBundle};

/// A refusal, with what the refused certificate claimed (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub refusal: Refusal,
    /// The certificate's SANs as `DNS:…`, `IP:…`, `URI:…` (empty when the
    /// certificate could not be parsed).
    pub sans: Vec<String>,
    /// The inventory host, when the refusal came after identification.
    pub host: Option<String>,
    /// A sentence for the log.
    pub detail: String,
}

/// A verified peer.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub facts: CertFacts,
    /// The inventory host, when the use identifies peers.
    pub host: Option<InventoryHost>,
    /// SHA-256 of the issuing CA's SPKI, from the verified path; `None`
    /// when the chain was not verified (an `insecure_` option).
    pub issuer_spki_sha256: Option<[u8; 32]>,
}

/// What happened inside one handshake that the caller cannot see from
/// rustls' result: the policy's verdict (rustls only says "access
/// denied"), the admitted identity, and whether the handshake completed.
#[derive(Debug, Default)]
pub struct HandshakeReport {
    pub refused: Option<Verdict>,
    pub admitted: Option<PeerIdentity>,
    /// The server saw the client's Finished (it then issues session
    /// tickets): whatever the client does next, the handshake succeeded.
    pub completed: bool,
}

tokio::task_local! {
    static REPORT: RefCell<HandshakeReport>;
}

/// Runs a handshake future and returns, with its output, what the policy
/// and the session store saw during it. The verifiers run inside the
/// handshake future, so the slot is that connection's own.
pub async fn observe<F: Future>(handshake: F) -> (F::Output, HandshakeReport) {
    REPORT
        .scope(RefCell::new(HandshakeReport::default()), async move {
            let output = handshake.await;
            (
                output,
                REPORT.with(|slot| std::mem::take(&mut *slot.borrow_mut())),
            )
        })
        .await
}

fn report(update: impl FnOnce(&mut HandshakeReport)) {
    // Outside `observe` there is nobody to tell; a refusal still fails
    // the handshake.
    let _ = REPORT.try_with(|slot| update(&mut slot.borrow_mut()));
}

pub(crate) fn report_completed() {
    report(|r| r.completed = true);
}

/// How much of the server's certificate an outbound use checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerVerification {
    /// Chain to the trust bundle and valid for the server name.
    #[default]
    Full,
    /// Chain to the trust bundle; any name (databases addressed by IP).
    CaOnly,
    /// Nothing: only under an `insecure_`-named option.
    InsecureNone,
}

/// Which methods of a service a route covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MethodPattern {
    Any,
    Exact(String),
    /// `Delete*`: every method whose name starts with `Delete`.
    Prefix(String),
}

/// One gRPC authorization rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteRule {
    /// As written: `/pkg.Service/Method`, `/pkg.Service/Prefix*` or
    /// `/pkg.Service/*`.
    pub path: String,
    pub service: String,
    pub method: MethodPattern,
    pub allow_roles: BTreeSet<String>,
}

impl RouteRule {
    pub fn matches(&self, service: &str, method: &str) -> bool {
        self.service == service
            && match &self.method {
                MethodPattern::Any => true,
                MethodPattern::Exact(m) => m == method,
                MethodPattern::Prefix(p) => method.starts_with(p.as_str()),
            }
    }
}

/// Which peers a use admits beyond a verifying chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PeerPolicy {
    /// The peer must be an inventory host (when an inventory is loaded).
    /// Peers of other trust domains — an operator's database, say — are
    /// not inventory hosts and are checked by chain alone.
    pub identify: bool,
    /// The peer's inventory host must hold one of these roles. `None`
    /// means any inventory host (or, without an inventory, any chain).
    pub roles: Option<BTreeSet<String>>,
    /// gRPC inbound: per service or method rules; the first match wins,
    /// and calls no rule matches fall back to `roles`.
    pub routes: Vec<RouteRule>,
    /// gRPC/HTTP inbound: roles are decided per request and answered in
    /// the protocol, not in the handshake.
    pub roles_per_request: bool,
    /// This inventory host passes whatever its roles (the admin endpoint
    /// admits the daemon's own certificate: `mtlsd status` and `reload`).
    pub also_host: Option<String>,
}

impl PeerPolicy {
    /// The role rule, the only one: `host` may pass `roles` (None = any).
    fn allows(&self, host: &InventoryHost, roles: Option<&BTreeSet<String>>) -> bool {
        match roles {
            None => true,
            Some(roles) => {
                !host.roles.is_disjoint(roles)
                    || self.also_host.as_deref() == Some(host.name.as_str())
            }
        }
    }

    /// The roles that let a connection stay open: the listener's, or on a
    /// per-request listener, any the listener or one of its routes admits.
    fn connection_roles(&self) -> Option<BTreeSet<String>> {
        if !self.roles_per_request || self.routes.is_empty() {
            return self.roles.clone();
        }
        let mut union = self.roles.clone()?;
        for route in &self.routes {
            union.extend(route.allow_roles.iter().cloned());
        }
        Some(union)
    }
}

/// When a peer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// During (or right after, for a resumed session) the TLS handshake.
    Handshake,
    /// A live connection, re-judged after a trust change.
    Connection,
}

/// The policy of one use, as built into a generation: its bundle, the
/// inventory and its rule.
#[derive(Debug)]
pub struct UsePolicy {
    pub(crate) name: String,
    pub(crate) usage: AuthUsage,
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) inventory: Option<Arc<RoleInventory>>,
    pub(crate) rule: PeerPolicy,
    /// Client-side uses: how much of the server's certificate to check.
    pub(crate) verify: ServerVerification,
}

/// The decision on one gRPC call or HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDecision<'a> {
    /// The metric label of the rule that decided: a route's path, or
    /// `default` for the listener's `allow_roles`.
    pub rule: &'a str,
    /// The caller's inventory host as the current inventory has it.
    pub host: Option<&'a InventoryHost>,
    /// `Err` explains the refusal to the caller.
    pub result: Result<(), String>,
    /// The refusal class, for the log and metrics (`None` when allowed).
    pub refusal: Option<Refusal>,
}

impl UsePolicy {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn rule(&self) -> &PeerPolicy {
        &self.rule
    }

    pub fn trust_domain(&self) -> &str {
        self.bundle.name()
    }

    /// Judges a peer's chain (leaf first). `server_name` is the name dialled
    /// (client-side uses with full verification); it is not checked again
    /// when a live connection is re-judged.
    pub fn admit(
        &self,
        chain: &[CertificateDer<'_>],
        server_name: Option<&ServerName<'_>>,
        now: UnixTime,
        stage: Stage,
    ) -> Result<PeerIdentity, Verdict> {
        let facts = chain.first().and_then(|der| CertFacts::from_der(der).ok());
        let name = match (self.verify, server_name, stage) {
            (ServerVerification::Full, Some(name), Stage::Handshake) => NameCheck::Server(name),
            _ => NameCheck::None,
        };
        let issuer = if self.verify == ServerVerification::InsecureNone {
            None
        } else {
            let provider = crate::provider::provider();
            match self
                .bundle
                .verify_chain(chain, self.usage, name, &provider, now)
            {
                Ok(verified) => Some(verified.issuer_spki_sha256),
                Err(e @ ChainError::WrongUsage(_)) => {
                    return Err(verdict(e.refusal(), facts.as_ref(), None, e.to_string()));
                }
                Err(ChainError::Invalid(e)) => {
                    let refusal = crate::trust::refusal_of(&e);
                    let detail = crate::trust::describe(&e);
                    return Err(verdict(refusal, facts.as_ref(), None, detail));
                }
            }
        };
        let Some(facts) = facts else {
            return Err(verdict(
                Refusal::BadCertificate,
                None,
                None,
                "the certificate cannot be parsed".to_owned(),
            ));
        };
        let inventory = self.inventory.as_ref().filter(|_| {
            self.rule.identify || self.rule.roles.is_some() || !self.rule.routes.is_empty()
        });
        let Some(inventory) = inventory else {
            return Ok(PeerIdentity {
                facts,
                host: None,
                issuer_spki_sha256: issuer,
            });
        };
        let host = match inventory.identify(&facts, issuer.as_ref()) {
            Ok(host) => host,
            Err(refusal) => {
                let detail = identify_detail(refusal, &facts);
                return Err(verdict(refusal, Some(&facts), None, detail));
            }
        };
        let roles = match stage {
            Stage::Handshake if self.rule.roles_per_request => None,
            Stage::Handshake => self.rule.roles.as_ref().map(Cow::Borrowed),
            Stage::Connection => self.rule.connection_roles().map(Cow::Owned),
        };
        if !self.rule.allows(host, roles.as_deref()) {
            return Err(verdict(
                Refusal::RoleNotAllowed,
                Some(&facts),
                Some(&host.name),
                format!(
                    "host '{}' (roles: {}) holds none of the roles '{}' allows ({})",
                    host.name,
                    join(&host.roles),
                    self.name,
                    roles.as_deref().map(join).unwrap_or_default()
                ),
            ));
        }
        Ok(PeerIdentity {
            host: Some(host.clone()),
            facts,
            issuer_spki_sha256: issuer,
        })
    }

    /// Decides one gRPC call (`call` = service and method) or HTTP request
    /// (`call` = None) by a peer admitted earlier: it is identified again
    /// in the current inventory, then the first matching route, else the
    /// use's roles, decide.
    pub fn authorize_request<'a>(
        &'a self,
        peer: Option<&PeerIdentity>,
        call: Option<(&str, &str)>,
    ) -> RequestDecision<'a> {
        let route = call.and_then(|(service, method)| {
            self.rule
                .routes
                .iter()
                .find(|route| route.matches(service, method))
        });
        let (label, roles) = match route {
            Some(route) => (route.path.as_str(), Some(&route.allow_roles)),
            None => ("default", self.rule.roles.as_ref()),
        };
        let rule_text = || match route {
            Some(route) => format!("route {}", route.path),
            None => "listener allow_roles".to_owned(),
        };
        let what = match call {
            Some((service, method)) => format!("call /{service}/{method}"),
            None => "use this listener".to_owned(),
        };
        let identified = match (&self.inventory, peer) {
            (Some(inventory), Some(peer)) if self.rule.identify || roles.is_some() => {
                Some(inventory.identify(&peer.facts, peer.issuer_spki_sha256.as_ref()))
            }
            _ => None,
        };
        let decide =
            |result: Result<(), String>, host: Option<&'a InventoryHost>| RequestDecision {
                rule: label,
                host,
                refusal: result.is_err().then_some(Refusal::RoleNotAllowed),
                result,
            };
        match (identified, roles) {
            (Some(Err(refusal)), _) => RequestDecision {
                refusal: Some(refusal),
                ..decide(
                    Err(format!(
                        "the caller's certificate is no longer admitted: {refusal}"
                    )),
                    None,
                )
            },
            (Some(Ok(host)), None) => decide(Ok(()), Some(host)),
            (None, None) => decide(Ok(()), None),
            (Some(Ok(host)), Some(roles)) if self.rule.allows(host, Some(roles)) => {
                decide(Ok(()), Some(host))
            }
            (Some(Ok(host)), Some(roles)) => decide(
                Err(format!(
                    "host '{}' (roles: {}) may not {what}: {} allows roles [{}]",
                    host.name,
                    join(&host.roles),
                    rule_text(),
                    join(roles)
                )),
                Some(host),
            ),
            (None, Some(roles)) => decide(
                Err(format!(
                    "caller is not an inventory host; {} allows roles [{}]",
                    rule_text(),
                    join(roles)
                )),
                None,
            ),
        }
    }
}

/// A refusal, with the SANs of what was presented (built only when a peer
/// is refused: admitted handshakes never format them).
fn verdict(
    refusal: Refusal,
    facts: Option<&CertFacts>,
    host: Option<&str>,
    detail: String,
) -> Verdict {
    Verdict {
        refusal,
        sans: facts
            .map(|f| f.sans.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        host: host.map(str::to_owned),
        detail,
    }
}

fn identify_detail(refusal: Refusal, facts: &CertFacts) -> String {
    match refusal {
        Refusal::Revoked => format!(
            "serial {} is listed as revoked in the inventory",
            facts.serial_hex
        ),
        Refusal::SanNotInInventory => {
            "no SAN of the certificate belongs to an inventory host".to_owned()
        }
        Refusal::AmbiguousHost => "the SANs belong to more than one inventory host".to_owned(),
        other => other.to_string(),
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

pub(crate) fn record_refusal(verdict: Verdict) {
    report(|r| r.refused = Some(verdict));
}

pub(crate) fn record_admitted(identity: PeerIdentity) {
    report(|r| r.admitted = Some(identity));
}
