//! The verified peer identity, handed to the local daemon as headers.
//!
//! mtlsd is the only party allowed to say who the peer is: every incoming
//! header in the `x-mtlsd-` namespace and every `x-forwarded-client-cert`
//! is removed before mtlsd sets its own, so a client cannot forge them.

use http::{HeaderMap, HeaderName, HeaderValue};
use mtlsd_reload::{InventoryHost, PeerIdentity};

pub const PEER_HOST: &str = "x-mtlsd-peer-host";
pub const PEER_ROLES: &str = "x-mtlsd-peer-roles";
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// Removes every identity header a client may have sent.
pub fn strip(headers: &mut HeaderMap) {
    let forgeable = |name: &http::HeaderName| {
        let name = name.as_str();
        name.starts_with("x-mtlsd-") || name == FORWARDED_CLIENT_CERT
    };
    // The common case, nothing to remove, allocates nothing.
    if !headers.keys().any(forgeable) {
        return;
    }
    let forged: Vec<_> = headers.keys().filter(|n| forgeable(n)).cloned().collect();
    for name in forged {
        headers.remove(&name);
    }
}

/// The header values for one verified peer, built once per connection:
/// every request on it carries the same identity, and cloning a
/// `HeaderValue` only bumps a reference count.
#[derive(Debug, Clone, Default)]
pub struct IdentityHeaders {
    host: Option<HeaderValue>,
    roles: Option<HeaderValue>,
    client_cert: Option<HeaderValue>,
}

impl IdentityHeaders {
    pub fn new(identity: &PeerIdentity) -> Self {
        Self {
            host: None,
            roles: None,
            client_cert: HeaderValue::from_str(&forwarded_client_cert(identity)).ok(),
        }
        .with_host(identity.host.as_ref())
    }

    /// The same certificate, with the host and roles `host` has now (the
    /// inventory may have changed since the connection was accepted).
    pub fn with_host(&self, host: Option<&InventoryHost>) -> Self {
        let (host, roles) = match host {
            Some(host) => {
                let roles: Vec<&str> = host.roles.iter().map(String::as_str).collect();
                (
                    HeaderValue::from_str(&host.name).ok(),
                    HeaderValue::from_str(&roles.join(",")).ok(),
                )
            }
            None => (None, None),
        };
        Self {
            host,
            roles,
            client_cert: self.client_cert.clone(),
        }
    }

    /// Sets the headers for the verified peer.
    pub fn set(&self, headers: &mut HeaderMap) {
        // Names made at compile time: a `&str` name is parsed and
        // checked again on every insert, three times per call.
        const NAMES: [HeaderName; 3] = [
            HeaderName::from_static(PEER_HOST),
            HeaderName::from_static(PEER_ROLES),
            HeaderName::from_static(FORWARDED_CLIENT_CERT),
        ];
        let [host, roles, client_cert] = NAMES;
        let values = [
            (host, &self.host),
            (roles, &self.roles),
            (client_cert, &self.client_cert),
        ];
        for (name, value) in values {
            if let Some(value) = value {
                headers.insert(name, value.clone());
            }
        }
    }
}

/// One L7 connection's verified peer and the headers that say so. The
/// host and roles come from the inventory in force for each request, so
/// the headers are rebuilt (once) when the generation changes.
#[derive(Debug)]
pub struct ConnectionIdentity {
    identity: Option<PeerIdentity>,
    base: Option<IdentityHeaders>,
    cached: std::sync::Mutex<(u64, Option<IdentityHeaders>)>,
}

impl ConnectionIdentity {
    /// `identity` as admitted under generation `generation`.
    pub fn new(identity: Option<PeerIdentity>, generation: u64) -> Self {
        let base = identity.as_ref().map(IdentityHeaders::new);
        Self {
            cached: std::sync::Mutex::new((generation, base.clone())),
            base,
            identity,
        }
    }

    pub fn identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// The headers under generation `generation`, whose inventory has the
    /// peer as `host`.
    pub fn headers(
        &self,
        generation: u64,
        host: Option<&InventoryHost>,
    ) -> Option<IdentityHeaders> {
        let base = self.base.as_ref()?;
        // Held only to compare and clone a few reference-counted values.
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != generation {
            *cached = (generation, Some(base.with_host(host)));
        }
        cached.1.clone()
    }
}

/// Envoy-style: `Hash=<sha256 hex>;Subject="…";DNS=…;URI=…`.
fn forwarded_client_cert(identity: &PeerIdentity) -> String {
    let facts = &identity.facts;
    let mut value = format!("Hash={}", facts.fingerprint.to_hex());
    let subject: String = facts
        .subject
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    value.push_str(&format!(";Subject=\"{subject}\""));
    for san in &facts.sans {
        match san {
            mtlsd_expiry::SubjectAltName::Dns(name) => value.push_str(&format!(";DNS={name}")),
            mtlsd_expiry::SubjectAltName::Uri(uri) => value.push_str(&format!(";URI={uri}")),
            _ => {}
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_removes_every_forgeable_header_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Mtlsd-Peer-Host", HeaderValue::from_static("admin"));
        headers.insert("x-mtlsd-anything", HeaderValue::from_static("x"));
        headers.append(
            "X-Forwarded-Client-Cert",
            HeaderValue::from_static("Hash=evil"),
        );
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        strip(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }
}
