//! Loading, validating and atomically publishing mtlsd's TLS material.
//!
//! The contract this crate keeps: material is read whole, checked whole
//! (PEM, key ↔ certificate, chain to the named trust bundle, validity,
//! key usages, key-file permissions), turned into complete rustls configs,
//! and only then published as one [`Generation`] through a
//! [`MaterialStore`]. Callers — start-up, `mtlsd check`, and every reload
//! trigger — go through [`Generation::load`], so "would this reload work?"
//! and "does this start?" are the same question.

#![forbid(unsafe_code)]

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
mod trust;
mod verify;

pub use crl::{CrlUnknownStatus, LoadedCrl};
pub use error::{CrlProblem, DerKind, FoundInstead, MaterialError, MaterialErrors};
pub use generation::{Generation, MaterialSpec};
pub use identity::{Identity, IdentitySpec};
pub use inventory::{InventoryDelta, InventoryHost, RoleInventory};
pub use pem::{MIN_RSA_BITS, PemContents, parse_pem, read_pem, rsa_key_bits};
pub use policy::{
    HandshakeReport, MethodPattern, PeerIdentity, PeerPolicy, Refusal, RequestDecision, RouteRule,
    Stage, UsePolicy, Verdict, observe,
};
pub use store::MaterialStore;
pub use tls::{ClientAuth, ServerVerification, TlsSettings, TlsSide, TlsUse, provider};
pub use trust::{
    AuthUsage, BundleCa, ChainError, NameCheck, TrustBundle, TrustDomainSpec, VerifiedChain,
    describe,
};
