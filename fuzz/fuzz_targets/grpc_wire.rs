//! Feeds arbitrary bytes to what mtlsd reads of a gRPC request itself:
//! the request path and its match against a route pattern, and the
//! `grpc-timeout` header. Input: `PATTERN\nPATH\nTIMEOUT`. Besides never
//! panicking, a path that splits must rebuild to itself, and an exact
//! route made from a path must match that path.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use mtlsd::config::{MethodPattern, RouteRule, parse_route_path};
use mtlsd::protocols::grpc_wire::{grpc_timeout, parse_grpc_timeout, split_path};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let pattern = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let timeout = parts.next().unwrap_or_default();

    let split = split_path(path);
    if let Some((service, method)) = split {
        assert_eq!(format!("/{service}/{method}"), path);
    }
    if let Some((service, method)) = parse_route_path(pattern) {
        let route = RouteRule {
            path: pattern.to_owned(),
            service,
            method,
            allow_roles: BTreeSet::new(),
        };
        if let Some((service, method)) = split {
            let _ = route.matches(service, method);
        }
        if let (MethodPattern::Exact(_), Some((service, method))) =
            (&route.method, split_path(pattern))
        {
            assert!(route.matches(service, method), "{pattern}");
        }
    }

    let _ = parse_grpc_timeout(timeout);
    if let Ok(value) = http::HeaderValue::from_bytes(timeout.as_bytes()) {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value);
        assert_eq!(grpc_timeout(&headers), parse_grpc_timeout(timeout));
    }
});
