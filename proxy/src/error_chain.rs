//! One line for an error and its causes, as `{:#}` prints an `anyhow`
//! chain: for the places that show a typed error as text (a rejected
//! reload's reason, `mtlsd check`) without going through `anyhow`. A shared
//! leaf.

use std::error::Error;
use std::fmt;

/// Displays `error: cause: cause…`, each error's own message once.
#[derive(Debug)]
pub struct WithCauses<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(next) = cause {
            write!(f, ": {next}")?;
            cause = next.source();
        }
        Ok(())
    }
}

/// The innermost cause of `error` (`error` itself when it has none): what
/// a one-line answer to a peer shows.
pub fn root_cause<'a>(error: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_is_shown_once() {
        let error = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(WithCauses(&error).to_string(), "cannot start: disk on fire");
        let alone = std::io::Error::other("alone");
        assert_eq!(WithCauses(&alone).to_string(), "alone");
        assert_eq!(root_cause(&error).to_string(), "disk on fire");
        assert_eq!(root_cause(&alone).to_string(), "alone");
    }
}
