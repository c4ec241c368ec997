//! Building complete rustls configurations from validated material.
//!
//! Configs are built per *use* (one listener or upstream), not per request:
//! the data path only looks one up in the current [`Generation`] and clones
//! an `Arc`. Every build makes fresh session caches; the generation then
//! carries the previous one's caches over only when its trust is the same
//! (`Generation::keep_sessions_from`). That is what makes a trust change
//! take effect at once — rustls does not re-run the client certificate
//! verifier on a resumed session, so a session cached under the old bundle
//! must not survive into the new generation — while a renewal of this
//! host's own leaf does not cost every peer a full handshake.
//!
//! [`Generation`]: crate::Generation

use std::sync::Arc;

use rustls::server::{StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::identity::Identity;
pub use crate::policy::ServerVerification;
use crate::policy::{PeerPolicy, UsePolicy};
pub use crate::provider::provider;
use crate::verify::{PolicyClientVerifier, PolicyServerVerifier};

/// Whether a server-side use asks peers for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// The handshake fails without a certificate that verifies.
    Required,
    /// A certificate is verified if offered; none is accepted.
    Optional,
    /// No certificate is requested.
    None,
}

/// Which side of the handshake a use is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSide {
    /// Accept TLS (inbound listeners).
    Server {
        client_auth: ClientAuth,
        alpn: Vec<Vec<u8>>,
    },
    /// Originate TLS (outbound listeners), presenting the host identity
    /// when the server asks for a certificate and `present_certificate`.
    Client {
        alpn: Vec<Vec<u8>>,
        verify: ServerVerification,
        present_certificate: bool,
    },
}

/// One place that needs a TLS config: a listener, keyed by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsUse {
    pub name: String,
    pub trust_domain: String,
    pub side: TlsSide,
    /// Who the use admits beyond a verifying chain.
    pub policy: PeerPolicy,
}

/// Settings shared by every config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// TLS 1.3 only unless this is set; then 1.2 is accepted too.
    pub allow_tls12: bool,
}

fn versions(settings: TlsSettings) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static WITH_TLS12: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    if settings.allow_tls12 {
        &WITH_TLS12
    } else {
        &TLS13_ONLY
    }
}

pub(crate) fn server_config(
    identity: &Identity,
    policy: Arc<UsePolicy>,
    client_auth: ClientAuth,
    alpn: &[Vec<u8>],
    settings: TlsSettings,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => Arc::new(PolicyClientVerifier {
            root_hints: policy.bundle.roots().subjects(),
            mandatory: client_auth == ClientAuth::Required,
            algorithms: provider.signature_verification_algorithms,
            policy,
        }),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(settings))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            identity.certified_key().clone(),
        )));
    config.alpn_protocols = alpn.to_vec();
    config.session_storage = Arc::new(CompletionSignal(config.session_storage.clone()));
    Ok(Arc::new(config))
}

pub(crate) fn client_config(
    identity: &Identity,
    policy: Arc<UsePolicy>,
    alpn: &[Vec<u8>],
    settings: TlsSettings,
    present_certificate: bool,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(settings))?
        .dangerous()
        // Not dangerous: the policy verifies the chain (webpki, CRLs) and
        // the name before anything else.
        .with_custom_certificate_verifier(Arc::new(PolicyServerVerifier {
            policy,
            algorithms: provider.signature_verification_algorithms,
        }));
    let mut config = if present_certificate {
        builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            identity.certified_key().clone(),
        )))
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// The server's session store, which also tells the handshake report that
/// the handshake completed: rustls stores a session (and issues tickets)
/// exactly when it has verified the client's Finished. A client that then
/// resets the connection (health checkers, `openssl s_time`) makes the
/// ticket write fail inside the accept future; that is still a completed
/// handshake, not a failure.
#[derive(Debug)]
struct CompletionSignal(Arc<dyn StoresServerSessions>);

impl StoresServerSessions for CompletionSignal {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        crate::policy::report_completed();
        self.0.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.take(key)
    }

    fn can_cache(&self) -> bool {
        self.0.can_cache()
    }
}
