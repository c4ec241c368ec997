//! gRPC status, in one place: the codes mtlsd answers with, the
//! trailers-only answer it sends, how a response's status is read, and
//! the name each code has as a metric label.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty};

use super::l7::Body;

/// The gRPC status codes (https://grpc.io/docs/guides/status-codes/).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [Self; 17] = [
        Self::Ok,
        Self::Cancelled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The code a `grpc-status` number stands for; unknown numbers are
    /// `Unknown`, as gRPC clients read them.
    pub fn from_number(number: u16) -> Self {
        Self::ALL
            .get(usize::from(number))
            .copied()
            .unwrap_or(Self::Unknown)
    }

    pub fn number(self) -> u16 {
        self as u16
    }

    /// The name as metric labels read it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Cancelled => "CANCELLED",
            Self::Unknown => "UNKNOWN",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::Aborted => "ABORTED",
            Self::OutOfRange => "OUT_OF_RANGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::Internal => "INTERNAL",
            Self::Unavailable => "UNAVAILABLE",
            Self::DataLoss => "DATA_LOSS",
            Self::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

/// The `grpc-status` of a response's headers (a trailers-only answer) or
/// trailers.
pub fn status_of(headers: &HeaderMap) -> Option<GrpcCode> {
    // A name made at compile time: a `&str` key is parsed on every lookup.
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    let number: u16 = headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()?;
    Some(GrpcCode::from_number(number))
}

/// A trailers-only gRPC response: HTTP 200 with the status in the headers.
pub fn error(code: GrpcCode, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code.number()));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// gRPC's grpc-message encoding: printable ASCII except '%' stays.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_answers_carry_them() {
        for code in GrpcCode::ALL {
            assert_eq!(GrpcCode::from_number(code.number()), code);
        }
        assert_eq!(GrpcCode::from_number(99), GrpcCode::Unknown);
        assert_eq!(GrpcCode::PermissionDenied.name(), "PERMISSION_DENIED");
        let answer = error(GrpcCode::PermissionDenied, "50% über");
        assert_eq!(
            status_of(answer.headers()),
            Some(GrpcCode::PermissionDenied)
        );
        assert_eq!(answer.headers()["grpc-message"], "50%25 %C3%BCber");
    }
}
