//! What a reload publishes: mtlsd's TLS material, role inventory, CRLs and
//! the one admission policy built from them.
//!
//! The contract this crate keeps: material is read whole, checked whole
//! (PEM, key ↔ certificate, chain to the named trust bundle, validity,
//! key usages, key-file permissions, inventory, CRL signatures), turned
//! into complete rustls configs and per-use [`UsePolicy`]s, and only then
//! published as one [`Generation`] through a [`MaterialStore`]. Callers —
//! start-up, `mtlsd check`, and every reload trigger — go through
//! [`Generation::load`], so "would this reload work?" and "does this
//! start?" are the same question. Every admission decision (handshake
//! verifiers, resumed sessions, re-judging after a reload, each gRPC call
//! and HTTP request) is [`UsePolicy::admit`] or
//! [`UsePolicy::authorize_request`].
//!
//! The reload *loop* — triggers, the diff, the audit log — lives in the
//! daemon (`proxy/src/reloading/`): it decides what to do with listeners
//! and connections, which this crate knows nothing of.

#![forbid(unsafe_code)]

mod ca_dependence;
mod crl;
mod error;
mod generation;
mod identity;
mod inventory;
mod pem;
mod policy;
mod provider;
mod refusal;
mod store;
mod tls;
mod token;
mod trust;
mod verify;

pub use ca_dependence::CaDependence;
pub use crl::{CrlUnknownStatus, LoadedCrl};
pub use error::{CrlProblem, DerKind, FoundInstead, MaterialError, MaterialErrors};
pub use generation::{Generation, MaterialSpec};
pub use identity::{Identity, IdentitySpec};
pub use inventory::{InventoryDelta, InventoryHost, InventoryReader, RoleInventory};
pub use pem::{MIN_RSA_BITS, PemContents, parse_pem, read_pem, rsa_key_bits};
pub use policy::{
    HandshakeReport, MethodPattern, PeerIdentity, PeerPolicy, Refusal, RequestDecision, RouteRule,
    Stage, UsePolicy, Verdict, observe,
};
pub use store::MaterialStore;
pub use tls::{ClientAuth, ServerVerification, TlsSettings, TlsSide, TlsUse, provider};
pub use token::{
    DEFAULT_TOKEN_SESSIONS, DEFAULT_TOKEN_TIMEOUT, KeySource, MAX_TOKEN_SESSIONS, PKCS11_SCHEME,
    PinSource, Pkcs11Uri, TokenError, TokenKeyInfo, TokenKeySpec, TokenSignError, UriError,
    wait_for_token_sessions_to_close,
};
pub use trust::{
    AuthUsage, BundleCa, ChainError, NameCheck, TrustBundle, TrustDomainSpec, VerifiedChain,
    describe,
};
