//! Building complete rustls configurations from validated material.
//!
//! Configs are built per *use* (one listener or upstream), not per request:
//! the data path only looks one up in the current [`Generation`] and clones
//! an `Arc`. Every build makes fresh session caches, which is what makes a
//! trust change take effect at once — rustls does not re-run the client
//! certificate verifier on a resumed session, so a session cached under the
//! old bundle must not survive into the new generation.
//!
//! [`Generation`]: crate::Generation

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::identity::Identity;
use crate::trust::TrustBundle;
use crate::verify::{
    AnyNameVerifier, NoVerification, PeerPolicy, PolicyCheck, PolicyClientVerifier,
    PolicyServerVerifier,
};

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

/// One place that needs a TLS config: a listener, keyed by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsUse {
    pub name: String,
    pub trust_domain: String,
    pub side: TlsSide,
    /// Checked during the handshake, after the chain.
    pub policy: PeerPolicy,
}

/// Settings shared by every config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// TLS 1.3 only unless this is set; then 1.2 is accepted too.
    pub allow_tls12: bool,
}

/// The crypto provider every config uses: aws-lc-rs, with its defaults.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
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
    bundle: &TrustBundle,
    client_auth: ClientAuth,
    alpn: &[Vec<u8>],
    settings: TlsSettings,
    check: PolicyCheck,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = provider();
    let webpki = match client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Required => {
            WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
        ClientAuth::Optional => {
            WebPkiClientVerifier::builder_with_provider(bundle.roots().clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
    };
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match client_auth {
        ClientAuth::None => webpki,
        _ => Arc::new(PolicyClientVerifier {
            inner: webpki,
            check,
        }),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(settings))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(
            identity.certified_key().clone(),
        )));
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

pub(crate) fn client_config(
    identity: &Identity,
    bundle: &TrustBundle,
    alpn: &[Vec<u8>],
    settings: TlsSettings,
    check: PolicyCheck,
    verify: ServerVerification,
    present_certificate: bool,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let webpki: Arc<dyn rustls::client::danger::ServerCertVerifier> =
        WebPkiServerVerifier::builder_with_provider(bundle.roots().clone(), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let webpki: Arc<dyn rustls::client::danger::ServerCertVerifier> = match verify {
        ServerVerification::Full => webpki,
        ServerVerification::CaOnly => Arc::new(AnyNameVerifier { inner: webpki }),
        ServerVerification::InsecureNone => Arc::new(NoVerification { inner: webpki }),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(settings))?
        .dangerous()
        // Not dangerous: the webpki verifier runs first, the policy after it.
        .with_custom_certificate_verifier(Arc::new(PolicyServerVerifier {
            inner: webpki,
            check,
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
