//! What a comparison run measured and how: the run's settings
//! ([`Params`]), every figure it reports ([`Figure`]), the samples per
//! figure and system with their medians and spreads ([`Results`]), and the
//! number format the outputs share. `compare` fills it in; `report` (JSON,
//! Markdown) and `chart` (PNG) turn it into files. It imports none of the
//! three, so they depend on it and not on each other.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::counts::SystemCounts;
use crate::systems::{Binaries, Kind};

/// Durations and sizes of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Params {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) rate_rps: u32,
    pub(crate) latency_warmup_s: f64,
    pub(crate) latency_s: f64,
    pub(crate) max_rate_connections: usize,
    pub(crate) max_rate_in_flight_per_connection: usize,
    pub(crate) max_rate_warmup_s: f64,
    pub(crate) max_rate_s: f64,
    pub(crate) bulk_s: f64,
    pub(crate) connections_concurrency: usize,
    pub(crate) connections_s: f64,
    pub(crate) held_connections: usize,
    /// Seconds of reloading per run, in windows of `reload_window_s`
    /// that alternate with as many quiet ones.
    pub(crate) reload_s: f64,
    pub(crate) reload_window_s: f64,
    pub(crate) reload_every_s: f64,
    /// Counts: warm-up calls before each count (at the count's
    /// concurrency), and calls counted at 1 and at 16 in flight.
    pub(crate) counts_warmup: u64,
    pub(crate) counts_calls: [u64; 2],
    /// The same under callgrind (about 50× slower).
    pub(crate) callgrind_warmup: u64,
    pub(crate) callgrind_calls: [u64; 2],
    /// The systems to run, by name.
    pub(crate) systems: Vec<String>,
    /// The figure groups to measure, by name (see [`GROUPS`]).
    pub(crate) figures: Vec<String>,
}

/// Figure groups `--figures` can pick.
pub(crate) const GROUPS: [&str; 8] = [
    "memory",
    "latency",
    "rate",
    "bulk",
    "connections",
    "handshakes",
    "counts",
    "reload",
];

impl Params {
    pub(crate) fn new(quick: bool, reps: Option<usize>) -> Self {
        let mut p = Self {
            quick,
            reps: 5,
            rate_rps: 1000,
            latency_warmup_s: 1.0,
            latency_s: 10.0,
            max_rate_connections: 4,
            max_rate_in_flight_per_connection: 16,
            max_rate_warmup_s: 1.0,
            max_rate_s: 5.0,
            bulk_s: 4.0,
            connections_concurrency: 16,
            connections_s: 4.0,
            held_connections: 1000,
            reload_s: 20.0,
            reload_window_s: 1.0,
            reload_every_s: 1.0,
            counts_warmup: 500,
            counts_calls: [5_000, 20_000],
            callgrind_warmup: 200,
            callgrind_calls: [2_000, 2_000],
            systems: Kind::ALL.iter().map(|k| k.name().to_owned()).collect(),
            figures: GROUPS.iter().map(|&g| g.to_owned()).collect(),
        };
        if quick {
            p.reps = 1;
            p.latency_warmup_s = 0.3;
            p.latency_s = 2.0;
            p.max_rate_warmup_s = 0.3;
            p.max_rate_s = 1.5;
            p.bulk_s = 1.0;
            p.connections_s = 1.0;
            p.reload_s = 3.0;
            p.reload_window_s = 1.0;
            p.counts_warmup = 200;
            p.counts_calls = [1_000, 2_000];
            p.callgrind_warmup = 50;
            p.callgrind_calls = [200, 400];
        }
        if let Some(r) = reps {
            p.reps = r;
        }
        p
    }

    /// Whether the figure group `group` is measured in this run.
    pub(crate) fn wants(&self, group: &str) -> bool {
        self.figures.iter().any(|g| g == group)
    }
}

/// Every figure the comparison reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Figure {
    LatL7P50,
    LatL7P99,
    LatL7P999,
    LatL7Cpu,
    LatL4P50,
    LatL4P99,
    LatL4P999,
    LatL4Cpu,
    RateL7,
    RateL7PerCpu,
    RateL7UserPerCall,
    RateL7SystemPerCall,
    RateL7NeighboursPerCall,
    RateL7Idle,
    RateL4,
    RateL4PerCpu,
    SyscallsC1,
    SyscallsC16,
    InstrC1,
    InstrC16,
    CtxC1,
    CtxC16,
    BulkMibS,
    BulkMibPerCpu,
    ConnFull,
    ConnFullPerCpu,
    ConnResume,
    ConnResumePerCpu,
    HsServer,
    HsServerPerCpu,
    RssIdleServer,
    RssIdleClient,
    RssConnServer,
    RssConnClient,
    Errors,
    ForeignCpu,
    ReloadFailed,
    ReloadP99,
    ReloadQuietP99,
    ReloadP99Ratio,
    ReloadP999,
    ReloadMax,
    ReloadSlowAfter,
    ReloadSlowQuiet,
    ReloadHandshakes,
}

/// How a figure is named and read.
pub(crate) struct Meta {
    pub(crate) id: &'static str,
    pub(crate) title: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) higher_is_better: bool,
}

impl Figure {
    pub(crate) const TABLE: [Figure; 36] = [
        Figure::LatL7P50,
        Figure::LatL7P99,
        Figure::LatL7P999,
        Figure::LatL7Cpu,
        Figure::LatL4P50,
        Figure::LatL4P99,
        Figure::LatL4P999,
        Figure::LatL4Cpu,
        Figure::RateL7,
        Figure::RateL7PerCpu,
        Figure::RateL7UserPerCall,
        Figure::RateL7SystemPerCall,
        Figure::RateL7NeighboursPerCall,
        Figure::RateL7Idle,
        Figure::RateL4,
        Figure::RateL4PerCpu,
        Figure::SyscallsC1,
        Figure::SyscallsC16,
        Figure::InstrC1,
        Figure::InstrC16,
        Figure::CtxC1,
        Figure::CtxC16,
        Figure::BulkMibS,
        Figure::BulkMibPerCpu,
        Figure::ConnFull,
        Figure::ConnFullPerCpu,
        Figure::ConnResume,
        Figure::ConnResumePerCpu,
        Figure::HsServer,
        Figure::HsServerPerCpu,
        Figure::RssIdleServer,
        Figure::RssIdleClient,
        Figure::RssConnServer,
        Figure::RssConnClient,
        Figure::Errors,
        Figure::ForeignCpu,
    ];
    pub(crate) const RELOAD: [Figure; 9] = [
        Figure::ReloadFailed,
        Figure::ReloadP99,
        Figure::ReloadQuietP99,
        Figure::ReloadP99Ratio,
        Figure::ReloadP999,
        Figure::ReloadMax,
        Figure::ReloadSlowAfter,
        Figure::ReloadSlowQuiet,
        Figure::ReloadHandshakes,
    ];

    pub(crate) fn meta(self) -> Meta {
        let m = |id, title, unit, higher_is_better| Meta {
            id,
            title,
            unit,
            higher_is_better,
        };
        match self {
            Figure::LatL7P50 => m(
                "latency_l7_p50",
                "gRPC 1 KiB unary at 1,000 rps, L7 (gRPC/h2): p50",
                "ms",
                false,
            ),
            Figure::LatL7P99 => m("latency_l7_p99", "… L7: p99", "ms", false),
            Figure::LatL7P999 => m("latency_l7_p99_9", "… L7: p99.9", "ms", false),
            Figure::LatL7Cpu => m(
                "latency_l7_proxy_cpu",
                "… L7: proxy CPU (both sides) at 1,000 rps",
                "% of a core",
                false,
            ),
            Figure::LatL4P50 => m(
                "latency_l4_p50",
                "gRPC 1 KiB unary at 1,000 rps, L4 (tcp): p50",
                "ms",
                false,
            ),
            Figure::LatL4P99 => m("latency_l4_p99", "… L4: p99", "ms", false),
            Figure::LatL4P999 => m("latency_l4_p99_9", "… L4: p99.9", "ms", false),
            Figure::LatL4Cpu => m(
                "latency_l4_proxy_cpu",
                "… L4: proxy CPU (both sides) at 1,000 rps",
                "% of a core",
                false,
            ),
            Figure::RateL7 => m(
                "max_rate_l7",
                "max unary rate, L7 (gRPC/h2)",
                "calls/s",
                true,
            ),
            Figure::RateL7PerCpu => m(
                "max_rate_l7_per_cpu",
                "… L7 per proxy CPU-second",
                "calls/CPU-s",
                true,
            ),
            Figure::RateL7UserPerCall => m(
                "max_rate_l7_user_us_per_call",
                "… L7 proxy user CPU per call (both proxies)",
                "µs/call",
                false,
            ),
            Figure::RateL7SystemPerCall => m(
                "max_rate_l7_system_us_per_call",
                "… L7 proxy system (kernel) CPU per call (both proxies)",
                "µs/call",
                false,
            ),
            Figure::RateL7NeighboursPerCall => m(
                "max_rate_l7_neighbours_us_per_call",
                "… L7 load generator + upstream CPU per call (the proxies' neighbours on the same cores)",
                "µs/call",
                false,
            ),
            Figure::RateL7Idle => m(
                "max_rate_l7_machine_idle_percent",
                "… L7 machine idle during the maximum rate (cores no process could use)",
                "% of all cores",
                false,
            ),
            Figure::RateL4 => m("max_rate_l4", "max unary rate, L4 (tcp)", "calls/s", true),
            Figure::RateL4PerCpu => m(
                "max_rate_l4_per_cpu",
                "… L4 per proxy CPU-second",
                "calls/CPU-s",
                true,
            ),
            Figure::SyscallsC1 => m(
                "syscalls_per_call_l7_c1",
                "count: system calls per L7 call, both proxies, 1 in flight (strace -c)",
                "syscalls/call",
                false,
            ),
            Figure::SyscallsC16 => m(
                "syscalls_per_call_l7_c16",
                "count: … system calls per L7 call, 16 in flight",
                "syscalls/call",
                false,
            ),
            Figure::InstrC1 => m(
                "instructions_per_call_l7_c1",
                "count: user-space instructions per L7 call, both proxies, 1 in flight (callgrind)",
                "Ir/call",
                false,
            ),
            Figure::InstrC16 => m(
                "instructions_per_call_l7_c16",
                "count: … instructions per L7 call, 16 in flight",
                "Ir/call",
                false,
            ),
            Figure::CtxC1 => m(
                "context_switches_per_call_l7_c1",
                "count: context switches per L7 call, both proxies, 1 in flight",
                "switches/call",
                false,
            ),
            Figure::CtxC16 => m(
                "context_switches_per_call_l7_c16",
                "count: … context switches per L7 call, 16 in flight",
                "switches/call",
                false,
            ),
            Figure::BulkMibS => m("bulk", "bulk TCP, one stream", "MiB/s", true),
            Figure::BulkMibPerCpu => m(
                "bulk_per_cpu",
                "bulk TCP per proxy CPU-second",
                "MiB/CPU-s",
                true,
            ),
            Figure::ConnFull => m(
                "connections_full",
                "new connections through the pair, resumption off (mtlsd: cannot be turned off)",
                "conn/s",
                true,
            ),
            Figure::ConnFullPerCpu => m(
                "connections_full_per_cpu",
                "… per proxy CPU-second",
                "conn/CPU-s",
                true,
            ),
            Figure::ConnResume => m(
                "connections_resume",
                "new connections through the pair, session resumption on",
                "conn/s",
                true,
            ),
            Figure::ConnResumePerCpu => m(
                "connections_resume_per_cpu",
                "… per proxy CPU-second",
                "conn/CPU-s",
                true,
            ),
            Figure::HsServer => m(
                "handshakes_server_full",
                "full mTLS handshakes at the server side (rustls client, no resumption)",
                "hs/s",
                true,
            ),
            Figure::HsServerPerCpu => m(
                "handshakes_server_full_per_cpu",
                "… per server-side CPU-second",
                "hs/CPU-s",
                true,
            ),
            Figure::RssIdleServer => m("rss_idle_server", "RSS idle, server side", "MB", false),
            Figure::RssIdleClient => m("rss_idle_client", "RSS idle, client side", "MB", false),
            Figure::RssConnServer => m(
                "rss_per_connection_server",
                "RSS per established mTLS connection, server side (1,000 held)",
                "KiB",
                false,
            ),
            Figure::RssConnClient => m(
                "rss_per_connection_client",
                "RSS per established mTLS connection, client side (1,000 held)",
                "KiB",
                false,
            ),
            Figure::Errors => m(
                "errors",
                "failed calls and connections (all figures of a repetition)",
                "count",
                false,
            ),
            Figure::ForeignCpu => m(
                "foreign_cpu",
                "CPU used by other processes on the machine during the system's run (noise check)",
                "% of a core",
                false,
            ),
            Figure::ReloadFailed => m(
                "reload_failed_calls",
                "failed calls during SIGHUP reloads",
                "count",
                false,
            ),
            Figure::ReloadP99 => m("reload_p99", "p99 during reloads", "ms", false),
            Figure::ReloadQuietP99 => m(
                "reload_quiet_p99",
                "p99 between reloads (the same run's quiet windows)",
                "ms",
                false,
            ),
            Figure::ReloadP99Ratio => m(
                "reload_p99_ratio",
                "p99 during reloads ÷ p99 between them, each run",
                "×",
                false,
            ),
            Figure::ReloadP999 => m("reload_p99_9", "p99.9 during reloads", "ms", false),
            Figure::ReloadMax => m("reload_max", "max during reloads", "ms", false),
            Figure::ReloadSlowAfter => m(
                "reload_slow_after",
                "calls slower than the quiet windows' p99, sent in the 50 ms after a reload (all reloads of the run): what the reloads themselves add",
                "count",
                false,
            ),
            Figure::ReloadSlowQuiet => m(
                "reload_slow_quiet",
                "the same count at the same offsets of the quiet windows (the machine's own stalls there)",
                "count",
                false,
            ),
            Figure::ReloadHandshakes => m(
                "reload_pair_handshakes",
                "mTLS handshakes between the pair's grpc listeners during the reload run (a count: the first pooled connection, then one per renewal, made beside the pooled connection, no call waiting for one)",
                "count",
                false,
            ),
        }
    }

    /// The L4 figure a direct latency sample also counts for.
    pub(crate) fn l4_twin(self) -> Figure {
        match self {
            Figure::LatL7P50 => Figure::LatL4P50,
            Figure::LatL7P99 => Figure::LatL4P99,
            Figure::LatL7P999 => Figure::LatL4P999,
            other => other,
        }
    }
}

/// Median, min and max of some samples.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub(crate) n: usize,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Stat {
    pub(crate) fn of(samples: &[f64]) -> Option<Stat> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Some(Stat {
            n,
            median,
            min: s[0],
            max: s[n - 1],
        })
    }

    /// The ranges of two systems overlap: a difference within the noise.
    pub(crate) fn overlaps(&self, other: &Stat) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// One run: its settings, the machine and peer versions it ran on, and
/// every sample per figure and system.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) date: String,
    pub(crate) params: Params,
    pub(crate) versions: BTreeMap<String, String>,
    pub(crate) machine: serde_json::Value,
    pub(crate) samples: BTreeMap<(Figure, Kind), Vec<f64>>,
    pub(crate) probes: BTreeMap<String, serde_json::Value>,
    pub(crate) rss_anon_kib: BTreeMap<String, Vec<serde_json::Value>>,
    pub(crate) send_lag_p99_us: BTreeMap<String, Vec<f64>>,
    pub(crate) reloads_per_run: u32,
    pub(crate) elapsed_s: f64,
    /// The counts' details (per syscall, mtlsd's top functions), by system.
    pub(crate) counts: BTreeMap<String, SystemCounts>,
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

impl Results {
    pub(crate) fn new(params: &Params, bins: &Binaries, date: &str) -> anyhow::Result<Self> {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        // Changes to what the mtlsd binary is built from (not bench/).
        let dirty = !command_line(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "proxy",
                "reload",
                "expiry",
                "devca",
            ],
        )
        .is_empty();
        let machine = serde_json::json!({
            "cpu": cpu,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "memory": std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or_default().trim(),
            "nice": std::fs::read_to_string("/proc/self/stat").ok().and_then(|t| {
                let after = t.rfind(')').map(|i| t[i + 2..].to_owned())?;
                after.split_whitespace().nth(16)?.parse::<i64>().ok()
            }),
            "git_commit": command_line("git", &["rev-parse", "--short", "HEAD"]),
            "git_worktree_dirty": dirty,
        });
        Ok(Self {
            date: date.to_owned(),
            params: params.clone(),
            versions: bins.versions(),
            machine,
            samples: BTreeMap::new(),
            probes: BTreeMap::new(),
            rss_anon_kib: BTreeMap::new(),
            send_lag_p99_us: BTreeMap::new(),
            reloads_per_run: 0,
            elapsed_s: 0.0,
            counts: BTreeMap::new(),
        })
    }

    pub(crate) fn add(&mut self, figure: Figure, kind: Kind, value: f64) {
        self.samples.entry((figure, kind)).or_default().push(value);
    }

    pub(crate) fn stat(&self, figure: Figure, kind: Kind) -> Option<Stat> {
        self.samples.get(&(figure, kind)).and_then(|s| Stat::of(s))
    }

    /// Anonymous RSS of both sides (KiB) with the connections held.
    pub(crate) fn note_anon(&mut self, kind: Kind, client_kib: u64, server_kib: u64) {
        self.rss_anon_kib
            .entry(kind.name().to_owned())
            .or_default()
            .push(serde_json::json!({"client_with_connections": client_kib, "server_with_connections": server_kib}));
    }

    pub(crate) fn note_lag(&mut self, kind: Kind, us: f64) {
        self.send_lag_p99_us
            .entry(kind.name().to_owned())
            .or_default()
            .push(us);
    }

    pub(crate) fn finish(&mut self, elapsed: Duration) {
        self.elapsed_s = elapsed.as_secs_f64();
        self.machine["loadavg_at_end"] = serde_json::Value::from(
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim(),
        );
    }
}

/// Three significant digits, no exponent.
pub(crate) fn fmt(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
