//! The two pieces of gRPC's wire format mtlsd reads itself: the request
//! path (`/pkg.Service/Method`, matched against routes) and the
//! `grpc-timeout` header. They take bytes a peer chose, so they live
//! apart from [`super::grpc`], as plain functions the fuzz targets call
//! (`fuzz/fuzz_targets/grpc_wire.rs`).

use std::time::Duration;

use http::HeaderMap;

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// `grpc-timeout: 250m` → 250 ms. Malformed values are ignored (the
/// upstream sees them and decides).
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    // A name made at compile time: a `&str` key is parsed on every lookup.
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    parse_grpc_timeout(headers.get(GRPC_TIMEOUT)?.to_str().ok()?)
}

/// A `grpc-timeout` value: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    // Checked: a multi-byte last character has no boundary there.
    let (digits, unit) = value.split_at_checked(value.len() - 1)?;
    // Digits only: `u64::from_str` would also take a leading '+'.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_have_one_to_eight_digits_and_a_unit() {
        assert_eq!(parse_grpc_timeout("1n"), Some(Duration::from_nanos(1)));
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        for bad in [
            "",
            "1",
            "S",
            "999999999S",
            "1.5S",
            "+1S",
            "1s",
            "١S",
            "1é",
            "é",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
