//! Prometheus metrics, prefix `mtlsd_`: the per-request figures.
//!
//! Authorization decisions, gRPC requests and their latency, and the HTTP
//! connections mtlsd ends itself are live vectors incremented where the
//! request is handled. Everything that describes *state* is rendered at
//! scrape time by [`crate::scrape::StateCollector`], which reads the
//! daemon's state; this module imports nothing of the daemon, so the data
//! path can use it.
//!
//! Label sets are bounded by configuration: listener names, route
//! patterns, reason classes, gRPC status names.

use std::time::Duration;

use mtlsd_expiry::Fingerprint;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// Per-request metrics, shared by every listener.
#[derive(Debug)]
pub struct RequestMetrics {
    connections_ended: IntCounterVec,
    authz: IntCounterVec,
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
}

impl RequestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let authz = IntCounterVec::new(
            Opts::new(
                "mtlsd_authz_decisions_total",
                "Authorization decisions per request (gRPC call or HTTP request), by listener, matched rule and decision.",
            ),
            &["listener", "rule", "decision"],
        )?;
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "mtlsd_grpc_requests_total",
                "gRPC requests by listener, matched rule and grpc-status of the response.",
            ),
            &["listener", "rule", "grpc_status"],
        )?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "mtlsd_grpc_request_duration_seconds",
                "Time from a gRPC request's headers to the end of its response, by listener and matched rule.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["listener", "rule"],
        )?;
        let connections_ended = IntCounterVec::new(
            Opts::new(
                "mtlsd_http_connections_ended_total",
                "HTTP/2 and HTTP/1 connections mtlsd ended itself, by listener and reason: no_first_bytes (nothing sent after the TLS handshake), idle (no open stream for idle_timeout), reset_flood (streams reset faster than allowed).",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(connections_ended.clone()))?;
        registry.register(Box::new(authz.clone()))?;
        registry.register(Box::new(grpc_requests.clone()))?;
        registry.register(Box::new(grpc_duration.clone()))?;
        Ok(Self {
            connections_ended,
            authz,
            grpc_requests,
            grpc_duration,
        })
    }

    pub fn connection_ended(&self, listener: &str, reason: &str) {
        self.connections_ended
            .with_label_values(&[listener, reason])
            .inc();
    }

    pub fn authz(&self, listener: &str, rule: &str, allowed: bool) {
        let decision = if allowed { "allow" } else { "deny" };
        self.authz
            .with_label_values(&[listener, rule, decision])
            .inc();
    }

    /// One gRPC request that ended with `status` (its name, as
    /// `GrpcCode::name` gives it) after `elapsed`.
    pub fn grpc_request(&self, listener: &str, rule: &str, status: &str, elapsed: Duration) {
        self.grpc_requests
            .with_label_values(&[listener, rule, status])
            .inc();
        self.grpc_duration
            .with_label_values(&[listener, rule])
            .observe(elapsed.as_secs_f64());
    }
}

/// The series an allowed gRPC call touches, for one listener and rule,
/// looked up once and shared by the calls that follow (a connection's
/// calls mostly match the same rule): a lookup by label values hashes the
/// labels and takes the vector's lock, three times per call.
#[derive(Debug)]
pub struct GrpcCallSeries {
    listener: String,
    rule: String,
    allowed: IntCounter,
    /// The status label of a successful call, and its counter.
    ok_status: &'static str,
    ok: IntCounter,
    duration: Histogram,
}

impl GrpcCallSeries {
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// A call was allowed (`mtlsd_authz_decisions_total{decision="allow"}`).
    pub fn allowed(&self) {
        self.allowed.inc();
    }

    /// The call ended with `status` after `elapsed`; the same series as
    /// [`RequestMetrics::grpc_request`].
    pub fn ended(&self, metrics: &RequestMetrics, status: &str, elapsed: Duration) {
        if status == self.ok_status {
            self.ok.inc();
        } else {
            metrics
                .grpc_requests
                .with_label_values(&[&self.listener, &self.rule, status])
                .inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
    }
}

impl RequestMetrics {
    /// The series of allowed calls on `listener` that matched `rule`;
    /// `ok_status` is the status label of a successful call.
    pub fn grpc_call_series(
        &self,
        listener: &str,
        rule: &str,
        ok_status: &'static str,
    ) -> GrpcCallSeries {
        GrpcCallSeries {
            allowed: self.authz.with_label_values(&[listener, rule, "allow"]),
            ok_status,
            ok: self
                .grpc_requests
                .with_label_values(&[listener, rule, ok_status]),
            duration: self.grpc_duration.with_label_values(&[listener, rule]),
            listener: listener.to_owned(),
            rule: rule.to_owned(),
        }
    }
}

/// The short fingerprint used as a label: the first 8 bytes in hex.
pub fn short_fingerprint(fingerprint: Fingerprint) -> String {
    fingerprint.to_hex()[..16].to_owned()
}
