//! Certificate time facts.
//!
//! Everything mtlsd reports about a certificate — in `mtlsd inspect`, in the
//! status endpoint, in metrics and in expiry warnings — starts from the same
//! [`CertFacts`], parsed once from DER with x509-parser. Keeping the parsing
//! here means the loader, the CLI and the metrics can never disagree about a
//! certificate's serial, fingerprint or not-after.

#![forbid(unsafe_code)]

mod facts;
mod fingerprint;
mod state;

pub use facts::{CertFacts, FactsError, SubjectAltName, Validity};
pub use fingerprint::Fingerprint;
pub use state::{ExpiryState, ExpiryWindows};
