//! Peer verification: the chain first (webpki, against the listener's
//! trust bundle), then the inventory — the certificate must identify
//! exactly one host, not be revoked, and that host must hold an allowed
//! role.
//!
//! A policy refusal fails the handshake with an `access_denied` alert
//! (`certificate_revoked` for a revoked serial), which is all the peer
//! learns. mtlsd itself needs the precise class for its logs and counters,
//! but rustls hands back only the alert-level error; so the verifier also
//! records the class in a task-local slot that the connection's task reads
//! after the handshake ([`observe`]). The verifier runs inside the
//! handshake future, so the slot is that connection's own.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use mtlsd_expiry::CertFacts;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::inventory::{PolicyRejection, RoleInventory};

/// The handshake-signature checks every wrapper here leaves to the webpki
/// verifier it wraps (`self.inner`).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

tokio::task_local! {
    static VERDICT: RefCell<Option<Verdict>>;
}

/// Why the policy refused a peer, and what its certificate claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rejection: PolicyRejection,
    /// The certificate's SANs as `DNS:…`, `IP:…`, `URI:…`.
    pub sans: Vec<String>,
}

/// Runs a handshake future and returns, with its output, the verdict of a
/// refusal the policy verifiers made during it (if any).
pub async fn observe<F: Future>(handshake: F) -> (F::Output, Option<Verdict>) {
    VERDICT
        .scope(RefCell::new(None), async move {
            let output = handshake.await;
            (output, VERDICT.with(|slot| slot.borrow_mut().take()))
        })
        .await
}

fn record(verdict: Verdict) {
    // Outside `observe` there is nobody to tell; the error still fails the
    // handshake.
    let _ = VERDICT.try_with(|slot| *slot.borrow_mut() = Some(verdict));
}

/// Which peers a use accepts beyond a verifying chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The peer must be an inventory host (when an inventory is loaded).
    /// Peers of other trust domains — an operator's database, say — are
    /// not inventory hosts and are checked by chain alone.
    pub identify: bool,
    /// The peer's inventory host must hold one of these roles. `None`
    /// means any inventory host (or, without an inventory, any chain).
    pub roles: Option<BTreeSet<String>>,
    /// This inventory host passes whatever its roles (the admin endpoint
    /// admits the daemon's own certificate: `mtlsd status` and `reload`).
    pub also_host: Option<String>,
}

/// The inventory-and-role part of verification.
#[derive(Debug, Clone)]
pub(crate) struct PolicyCheck {
    pub(crate) inventory: Option<Arc<RoleInventory>>,
    pub(crate) policy: PeerPolicy,
}

impl PolicyCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let Some(inventory) = &self.inventory else {
            return Ok(());
        };
        if !self.policy.identify && self.policy.roles.is_none() {
            return Ok(());
        }
        let facts = CertFacts::from_der(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let refuse = |rejection: PolicyRejection| {
            record(Verdict {
                rejection,
                sans: facts.sans.iter().map(ToString::to_string).collect(),
            });
            Error::InvalidCertificate(match rejection {
                PolicyRejection::Revoked => CertificateError::Revoked,
                _ => CertificateError::ApplicationVerificationFailure,
            })
        };
        let host = inventory.identify(&facts).map_err(refuse)?;
        if let Some(roles) = &self.policy.roles
            && host.roles.is_disjoint(roles)
            && self.policy.also_host.as_deref() != Some(host.name.as_str())
        {
            return Err(refuse(PolicyRejection::RoleNotAllowed));
        }
        Ok(())
    }
}

/// Client certificates: webpki chain, then policy.
#[derive(Debug)]
pub(crate) struct PolicyClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) check: PolicyCheck,
}

impl ClientCertVerifier for PolicyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check.check(end_entity)?;
        Ok(verified)
    }

    delegate_signatures!();
}

/// Server certificates: webpki chain and name, then policy.
#[derive(Debug)]
pub(crate) struct PolicyServerVerifier {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) check: PolicyCheck,
}

impl ServerCertVerifier for PolicyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check.check(end_entity)?;
        Ok(verified)
    }

    delegate_signatures!();
}

/// Chain only: a name mismatch is forgiven, nothing else. webpki checks the
/// chain before the name, so a `NotValidForName` error means the chain
/// verified.
#[derive(Debug)]
pub(crate) struct AnyNameVerifier {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    delegate_signatures!();
}

/// Accepts any server certificate (the handshake signature is still
/// checked, so the server holds the key of what it presented). Only built
/// when an `insecure_`-named option asks for it.
#[derive(Debug)]
pub(crate) struct NoVerification {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    delegate_signatures!();
}
