//! Certificate time facts.
//!
//! Everything mtlsd reports about a certificate — in `mtlsd inspect`, in the
//! status endpoint, in metrics and in expiry warnings — starts from the same
//! [`CertFacts`], parsed once from DER with x509-parser, and the same
//! [`ExpiryState`]s. Keeping the parsing here means the loader, the CLI and
//! the metrics can never disagree about a certificate's serial, fingerprint
//! or not-after. The metrics and log events built on these facts live with
//! the daemon (`proxy/src/metrics.rs`, `expiry_watch.rs`): this crate has
//! no I/O.

#![forbid(unsafe_code)]

mod facts;
mod fingerprint;
mod state;

pub use facts::{CertFacts, FactsError, SubjectAltName, Validity};
pub use fingerprint::Fingerprint;
pub use state::{ExpiryState, ExpiryWindows};
