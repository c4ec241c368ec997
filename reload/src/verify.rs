//! The TLS verifiers: rustls' hooks into the one policy.
//!
//! Both sides hand the whole decision — chain, CRLs, name, revocation,
//! inventory identity, roles — to [`UsePolicy::admit`], so what a
//! handshake admits is exactly what a re-judged live connection keeps.
//! A refusal fails the handshake with the matching alert (`unknown_ca`,
//! `certificate_expired`, `certificate_revoked`, or `access_denied` for a
//! policy refusal), which is all the peer learns; the precise class goes
//! to mtlsd's log and counters through the handshake report
//! ([`observe`](crate::observe)).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::policy::{Stage, UsePolicy, record_admitted, record_refusal};
use crate::refusal::Refusal;

/// The handshake-signature checks, the same on both sides.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

fn judge(
    policy: &UsePolicy,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: Option<&ServerName<'_>>,
    now: UnixTime,
) -> Result<(), Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    match policy.admit(&chain, server_name, now, Stage::Handshake) {
        Ok(identity) => {
            record_admitted(identity);
            Ok(())
        }
        Err(verdict) => {
            let error = Error::InvalidCertificate(alert_for(verdict.refusal));
            record_refusal(verdict);
            Err(error)
        }
    }
}

fn alert_for(refusal: Refusal) -> CertificateError {
    match refusal {
        Refusal::UnknownCa => CertificateError::UnknownIssuer,
        Refusal::Expired => CertificateError::Expired,
        Refusal::NotYetValid => CertificateError::NotValidYet,
        Refusal::Revoked => CertificateError::Revoked,
        Refusal::NameMismatch => CertificateError::NotValidForName,
        Refusal::BadCertificate => CertificateError::BadEncoding,
        Refusal::SanNotInInventory | Refusal::AmbiguousHost | Refusal::RoleNotAllowed => {
            CertificateError::ApplicationVerificationFailure
        }
    }
}

/// Client certificates (inbound listeners, the admin endpoint).
#[derive(Debug)]
pub(crate) struct PolicyClientVerifier {
    pub(crate) policy: Arc<UsePolicy>,
    pub(crate) mandatory: bool,
    pub(crate) root_hints: Vec<DistinguishedName>,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PolicyClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        judge(&self.policy, end_entity, intermediates, None, now)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Server certificates (outbound listeners).
#[derive(Debug)]
pub(crate) struct PolicyServerVerifier {
    pub(crate) policy: Arc<UsePolicy>,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PolicyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        judge(
            &self.policy,
            end_entity,
            intermediates,
            Some(server_name),
            now,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
