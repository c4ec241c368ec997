//! RFC 7512 PKCS#11 URIs: which token and which key object `identity.key`
//! names (`pkcs11:token=mesh;object=host;type=private`).
//!
//! Only the attributes that pick a token and a private key are accepted.
//! The PIN and the module have their own keys under `[pkcs11]`, so a URI
//! that carries `pin-value`, `pin-source`, `module-name` or `module-path`
//! is refused, as is any attribute this parser does not know: a typo must
//! not silently widen the match to another key.

use std::fmt;

/// The scheme prefix that tells a PKCS#11 URI from a key file path.
pub const PKCS11_SCHEME: &str = "pkcs11:";

/// A parsed `pkcs11:` URI naming one private key in one token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pkcs11Uri {
    /// `token=`: the token label (CKA_LABEL of the token, as `softhsm2-util
    /// --init-token --label` sets it).
    pub token: String,
    /// `object=`: the key's CKA_LABEL.
    pub object: Option<String>,
    /// `id=`: the key's CKA_ID, bytes (percent-encoded in the URI).
    pub id: Option<Vec<u8>>,
    /// `manufacturer=`, `model=`, `serial=`: narrow the token further.
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
}

/// Why a `pkcs11:` URI was refused; the text completes
/// "identity.key: …".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    NotPkcs11,
    #[error("attribute {0:?} has no '=' (write name=value)")]
    NoValue(String),
    #[error("attribute '{0}' is given twice")]
    Duplicate(String),
    #[error("attribute '{name}': {reason}")]
    BadEncoding { name: String, reason: String },
    #[error(
        "attribute '{0}' is not supported; a key is named with token, object, id, type, \
         manufacturer, model and serial"
    )]
    Unknown(String),
    #[error(
        "attribute '{0}' would put the PIN in the configuration; give it in a file \
         (pkcs11.pin_file) or a systemd credential (pkcs11.pin_credential)"
    )]
    PinInUri(String),
    #[error("attribute '{0}': name the module with pkcs11.module instead")]
    ModuleInUri(String),
    #[error("type={0}: mtlsd signs with a private key; write type=private or leave type out")]
    NotPrivate(String),
    #[error("no token attribute: say which token holds the key (token=LABEL)")]
    NoToken,
    #[error("neither object nor id: say which key in token '{0}' (object=LABEL or id=%01)")]
    NoObject(String),
}

impl Pkcs11Uri {
    /// Whether `text` is meant as a PKCS#11 URI rather than a key file.
    pub fn is_uri(text: &str) -> bool {
        text.trim_start()
            .get(..PKCS11_SCHEME.len())
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case(PKCS11_SCHEME))
    }

    pub fn parse(text: &str) -> Result<Self, UriError> {
        let text = text.trim();
        if !Self::is_uri(text) {
            return Err(UriError::NotPkcs11);
        }
        let rest = &text[PKCS11_SCHEME.len()..];
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let mut seen: Vec<String> = Vec::new();
        let mut uri = Self {
            token: String::new(),
            object: None,
            id: None,
            manufacturer: None,
            model: None,
            serial: None,
        };
        let mut token = None;
        let attributes = path
            .split(';')
            .chain(query.into_iter().flat_map(|q| q.split('&')))
            .filter(|a| !a.is_empty());
        for attribute in attributes {
            let Some((name, value)) = attribute.split_once('=') else {
                return Err(UriError::NoValue(attribute.to_owned()));
            };
            let name = name.to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(UriError::Duplicate(name));
            }
            seen.push(name.clone());
            let bytes = percent_decode(value).map_err(|reason| UriError::BadEncoding {
                name: name.clone(),
                reason,
            })?;
            let text = || {
                String::from_utf8(bytes.clone()).map_err(|_| UriError::BadEncoding {
                    name: name.clone(),
                    reason: "the value is not UTF-8 text".to_owned(),
                })
            };
            match name.as_str() {
                "token" => token = Some(text()?),
                "object" => uri.object = Some(text()?),
                "id" => uri.id = Some(bytes),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "type" => {
                    let kind = text()?;
                    if kind != "private" {
                        return Err(UriError::NotPrivate(kind));
                    }
                }
                "pin-value" | "pin-source" => return Err(UriError::PinInUri(name)),
                "module-name" | "module-path" => return Err(UriError::ModuleInUri(name)),
                _ => return Err(UriError::Unknown(name)),
            }
        }
        uri.token = token.filter(|t| !t.is_empty()).ok_or(UriError::NoToken)?;
        if uri.object.is_none() && uri.id.is_none() {
            return Err(UriError::NoObject(uri.token));
        }
        Ok(uri)
    }

    /// How messages name the key: `token 'mesh' object 'host'`, with the
    /// id when the URI gives one.
    pub fn describe(&self) -> String {
        let mut out = format!("token '{}'", self.token);
        if let Some(object) = &self.object {
            out.push_str(&format!(" object '{object}'"));
        }
        if let Some(id) = &self.id {
            out.push_str(&format!(" id {}", hex(id)));
        }
        out
    }
}

impl fmt::Display for Pkcs11Uri {
    /// The canonical form: path attributes in a fixed order, values
    /// percent-encoded where RFC 7512 needs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec![format!("token={}", percent_encode(self.token.as_bytes()))];
        for (name, value) in [
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={}", percent_encode(value.as_bytes())));
            }
        }
        if let Some(id) = &self.id {
            let encoded: String = id.iter().map(|b| format!("%{b:02X}")).collect();
            parts.push(format!("id={encoded}"));
        }
        parts.push("type=private".to_owned());
        write!(f, "{PKCS11_SCHEME}{}", parts.join(";"))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn percent_decode(value: &str) -> Result<Vec<u8>, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let digits = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!(
                        "'%' at byte {} is not followed by two hex digits (write %25 for '%')",
                        i + 1
                    )
                })?;
            out.push(digits);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Leaves RFC 3986 unreserved characters and the few RFC 7512 allows in
/// path values; encodes everything else.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_object_and_type_are_read() {
        let uri = Pkcs11Uri::parse("pkcs11:token=mesh;object=host;type=private").unwrap();
        assert_eq!(uri.token, "mesh");
        assert_eq!(uri.object.as_deref(), Some("host"));
        assert_eq!(uri.id, None);
        assert_eq!(uri.describe(), "token 'mesh' object 'host'");
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=mesh;object=host;type=private"
        );
    }

    #[test]
    fn values_are_percent_decoded_and_the_id_is_bytes() {
        let uri =
            Pkcs11Uri::parse("pkcs11:token=my%20mesh;id=%01%aB%ff;serial=93a5;model=SoftHSM%20v2")
                .unwrap();
        assert_eq!(uri.token, "my mesh");
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xab, 0xff][..]));
        assert_eq!(uri.serial.as_deref(), Some("93a5"));
        assert_eq!(uri.model.as_deref(), Some("SoftHSM v2"));
        assert_eq!(uri.describe(), "token 'my mesh' id 01abff");
        // The canonical form reads back to the same key.
        assert_eq!(Pkcs11Uri::parse(&uri.to_string()).unwrap(), uri);
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_query_attributes_are_read() {
        assert!(Pkcs11Uri::is_uri("PKCS11:token=a;object=b"));
        assert!(!Pkcs11Uri::is_uri("/etc/mtlsd/tls/host.key"));
        assert!(!Pkcs11Uri::is_uri("pkcs11"));
        let err = Pkcs11Uri::parse("pkcs11:token=a;object=b?pin-value=1234").unwrap_err();
        assert_eq!(err, UriError::PinInUri("pin-value".to_owned()));
        assert!(err.to_string().contains("pkcs11.pin_file"), "{err}");
    }

    #[test]
    fn unknown_duplicate_and_malformed_attributes_are_refused() {
        let cases = [
            (
                "pkcs11:token=a;objet=b",
                UriError::Unknown("objet".to_owned()),
            ),
            (
                "pkcs11:token=a;token=b;object=c",
                UriError::Duplicate("token".to_owned()),
            ),
            (
                "pkcs11:token=a;object",
                UriError::NoValue("object".to_owned()),
            ),
            (
                "pkcs11:token=a;object=b;type=cert",
                UriError::NotPrivate("cert".to_owned()),
            ),
            (
                "pkcs11:token=a;object=b?module-path=/x.so",
                UriError::ModuleInUri("module-path".to_owned()),
            ),
            (
                "pkcs11:token=a;object=b?pin-source=file:/p",
                UriError::PinInUri("pin-source".to_owned()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Pkcs11Uri::parse(text).unwrap_err(), expected, "{text}");
        }
        let err = Pkcs11Uri::parse("pkcs11:token=a;id=%0").unwrap_err();
        assert!(
            matches!(&err, UriError::BadEncoding { name, reason } if name == "id" && reason.contains("two hex digits")),
            "{err:?}"
        );
        let err = Pkcs11Uri::parse("pkcs11:token=%ff;object=b").unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn the_token_and_the_object_are_required() {
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:object=host").unwrap_err(),
            UriError::NoToken
        );
        assert_eq!(
            Pkcs11Uri::parse("pkcs11:token=;object=host").unwrap_err(),
            UriError::NoToken
        );
        let err = Pkcs11Uri::parse("pkcs11:token=mesh;type=private").unwrap_err();
        assert_eq!(err, UriError::NoObject("mesh".to_owned()));
        assert!(err.to_string().contains("token 'mesh'"), "{err}");
        assert_eq!(
            Pkcs11Uri::parse("/etc/key.pem").unwrap_err(),
            UriError::NotPkcs11
        );
    }
}
