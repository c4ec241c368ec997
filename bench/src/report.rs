//! The report of a comparison run: the JSON (every sample), the Markdown
//! table with mtlsd/peer ratios and the goals of issue 7, reported (never
//! asserted), with how each system was set up and measured.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::results::{Figure, Results, fmt};
use crate::systems::Kind;

/// The report's views of a run's results.
impl Results {
    fn figure_json(&self, f: Figure) -> serde_json::Value {
        let meta = f.meta();
        let mut systems = serde_json::Map::new();
        for kind in Kind::ALL {
            if let (Some(samples), Some(st)) = (self.samples.get(&(f, kind)), self.stat(f, kind)) {
                systems.insert(
                    kind.name().to_owned(),
                    serde_json::json!({
                        "samples": samples,
                        "median": st.median,
                        "min": st.min,
                        "max": st.max,
                    }),
                );
            }
        }
        let mut ratios = serde_json::Map::new();
        if let Some(m) = self.stat(f, Kind::Mtlsd) {
            for peer in Kind::PEERS {
                if let Some(p) = self.stat(f, peer)
                    && p.median != 0.0
                {
                    ratios.insert(
                        peer.name().to_owned(),
                        serde_json::json!({
                            "mtlsd_over_peer": m.median / p.median,
                            "within_noise": m.n > 1 && p.n > 1 && m.overlaps(&p),
                        }),
                    );
                }
            }
        }
        serde_json::json!({
            "id": meta.id,
            "title": meta.title,
            "unit": meta.unit,
            "higher_is_better": meta.higher_is_better,
            "systems": systems,
            "ratios": ratios,
        })
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let settings: BTreeMap<&str, &[&str]> =
            Kind::ALL.iter().map(|k| (k.name(), k.settings())).collect();
        serde_json::json!({
            "benchmark": "compare",
            "date": self.date,
            "elapsed_s": self.elapsed_s,
            "params": self.params,
            "machine": self.machine,
            "versions": self.versions,
            "settings": settings,
            "figures": Figure::TABLE.iter().map(|&f| self.figure_json(f)).collect::<Vec<_>>(),
            "reload_under_load": {
                "reloads_per_run_each_side": self.reloads_per_run,
                "figures": Figure::RELOAD.iter().map(|&f| self.figure_json(f)).collect::<Vec<_>>(),
            },
            "handshake_probes": self.probes,
            "rss_anon_kib": self.rss_anon_kib,
            "generator_send_lag_p99_us": self.send_lag_p99_us,
            "goals": self.goals().iter().map(|g| serde_json::json!({
                "goal": g.goal, "measured": g.measured, "met": g.met,
            })).collect::<Vec<_>>(),
        })
    }

    fn median(&self, f: Figure, k: Kind) -> Option<f64> {
        self.stat(f, k).map(|s| s.median)
    }

    /// The goals of issue 7 against this run's medians.
    pub(crate) fn goals(&self) -> Vec<Goal> {
        let mut out = Vec::new();
        let best = |f: Figure, peers: &[Kind], higher: bool| -> Option<(Kind, f64)> {
            peers
                .iter()
                .filter_map(|&k| self.median(f, k).map(|v| (k, v)))
                .reduce(|a, b| if (b.1 > a.1) == higher { b } else { a })
        };
        for (p99, label, peers) in [
            (Figure::LatL7P99, "L7", &[Kind::Haproxy, Kind::Nginx][..]),
            (Figure::LatL4P99, "L4", &Kind::PEERS[..]),
        ] {
            if let (Some(m), Some(d)) = (
                self.median(p99, Kind::Mtlsd),
                self.median(p99, Kind::Direct),
            ) {
                let added = m - d;
                out.push(Goal {
                    goal: format!("{label}: added p99 at 1,000 rps ≤ 0.15 ms over direct"),
                    measured: format!("{added:.3} ms (mtlsd {m:.3} − direct {d:.3})"),
                    met: added <= 0.15,
                });
                let added_peers: Vec<(Kind, f64)> = peers
                    .iter()
                    .filter_map(|&k| self.median(p99, k).map(|v| (k, v - d)))
                    .collect();
                if let Some((k, best_added)) = added_peers
                    .into_iter()
                    .reduce(|a, b| if b.1 < a.1 { b } else { a })
                {
                    let ratio = added / best_added;
                    out.push(Goal {
                        goal: format!("{label}: added p99 ≤ 0.7× the best peer's"),
                        measured: format!(
                            "{ratio:.2}× ({added:.3} ms vs {} {best_added:.3} ms)",
                            k.name()
                        ),
                        met: ratio <= 0.7,
                    });
                }
            }
        }
        for (f, label, peers) in [
            (Figure::RateL7, "L7", &[Kind::Haproxy, Kind::Nginx][..]),
            (Figure::RateL4, "L4", &Kind::PEERS[..]),
        ] {
            if let (Some(m), Some((k, b))) = (self.median(f, Kind::Mtlsd), best(f, peers, true)) {
                out.push(Goal {
                    goal: format!("{label}: max unary rate ≥ 1.2× the best peer"),
                    measured: format!("{:.2}× ({m:.0} vs {} {b:.0} calls/s)", m / b, k.name()),
                    met: m / b >= 1.2,
                });
            }
        }
        for (f, what) in [
            (
                Figure::HsServerPerCpu,
                "full handshakes per server-side CPU-second (both full)",
            ),
            (
                Figure::ConnFullPerCpu,
                "new connections per pair CPU-second (HAProxy full, mtlsd resumes)",
            ),
            (
                Figure::ConnResumePerCpu,
                "new connections per pair CPU-second (both resume)",
            ),
        ] {
            if let (Some(m), Some(h)) = (self.median(f, Kind::Mtlsd), self.median(f, Kind::Haproxy))
            {
                out.push(Goal {
                    goal: format!("handshakes per CPU-second ≥ 1.5× HAProxy: {what}"),
                    measured: format!("{:.2}× ({m:.0} vs {h:.0})", m / h),
                    met: m / h >= 1.5,
                });
            }
        }
        if let (Some(m), Some((k, b))) = (
            self.median(Figure::BulkMibPerCpu, Kind::Mtlsd),
            best(Figure::BulkMibPerCpu, &Kind::PEERS, true),
        ) {
            out.push(Goal {
                goal: "bulk bytes per CPU-second ≥ the best peer".into(),
                measured: format!("{:.2}× ({m:.0} vs {} {b:.0} MiB/CPU-s)", m / b, k.name()),
                met: m >= b,
            });
        }
        for (f, side) in [
            (Figure::RssConnServer, "server"),
            (Figure::RssConnClient, "client"),
        ] {
            if let Some(m) = self.median(f, Kind::Mtlsd) {
                out.push(Goal {
                    goal: format!("≤ 32 KiB RSS per established connection ({side} side)"),
                    measured: format!("{m:.1} KiB"),
                    met: m <= 32.0,
                });
            }
        }
        for (f, side) in [
            (Figure::RssIdleServer, "server"),
            (Figure::RssIdleClient, "client"),
        ] {
            if let Some(m) = self.median(f, Kind::Mtlsd) {
                out.push(Goal {
                    goal: format!("≤ 12 MB RSS idle ({side} side)"),
                    measured: format!("{m:.1} MB"),
                    met: m <= 12.0,
                });
            }
        }
        out
    }

    pub(crate) fn to_markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.params;
        let _ = writeln!(
            md,
            "# mtlsd vs HAProxy, nginx, stunnel — {}{}\n",
            self.date,
            if p.quick { " (quick smoke run)" } else { "" }
        );
        let mach = &self.machine;
        let _ = writeln!(
            md,
            "Machine: {} × {} cores, {}, kernel {}; load average at start {}, at end {}; \
             the benchmark and everything it starts ran at nice {}. \
             mtlsd at commit {}{}. Run took {:.0} s.\n",
            mach["cpu"].as_str().unwrap_or("?"),
            mach["cores"],
            mach["memory"].as_str().unwrap_or("?"),
            mach["kernel"].as_str().unwrap_or("?"),
            mach["loadavg_at_start"].as_str().unwrap_or("?"),
            mach["loadavg_at_end"].as_str().unwrap_or("?"),
            mach["nice"],
            mach["git_commit"].as_str().unwrap_or("?"),
            if mach["git_worktree_dirty"].as_bool().unwrap_or(false) {
                " with uncommitted changes to proxy/, reload/, expiry/ or devca/"
            } else {
                ""
            },
            self.elapsed_s,
        );
        let _ = writeln!(
            md,
            "Everything — load generator, both proxies of a pair, upstream — shares the same \
             {} cores, so every figure includes that contention, equally for every system. \
             Each cell: median of {} repetition(s), (min–max) below it when there is more than \
             one. Ratio = mtlsd median / peer median; **~** marks a difference within the \
             noise (the two min–max ranges overlap). For figures where lower is better (↓), \
             a ratio below 1 favours mtlsd; where higher is better (↑), above 1 does.\n",
            mach["cores"], p.reps
        );
        let _ = writeln!(
            md,
            "| figure | unit | direct | mtlsd | haproxy | nginx | stunnel | mtlsd/haproxy | mtlsd/nginx | mtlsd/stunnel |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for f in Figure::TABLE {
            let meta = f.meta();
            let arrow = if meta.higher_is_better { "↑" } else { "↓" };
            let mut row = format!("| {} {arrow} | {} |", meta.title, meta.unit);
            for kind in Kind::ALL {
                row.push_str(&format!(" {} |", self.cell(f, kind)));
            }
            for peer in Kind::PEERS {
                row.push_str(&format!(" {} |", self.ratio_cell(f, peer)));
            }
            let _ = writeln!(md, "{row}");
        }

        let _ = writeln!(md, "\n## Goals of issue 7 (reported, not asserted)\n");
        let _ = writeln!(md, "| goal | measured (medians) | met |\n|---|---|---|");
        for g in self.goals() {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                g.goal,
                g.measured,
                if g.met { "yes" } else { "**no**" }
            );
        }

        let _ = writeln!(md, "\n## Reload under load (mtlsd only)\n");
        let _ = writeln!(
            md,
            "The L7 latency run (1,000 rps, open loop) while both sides get a new certificate \
             and SIGHUP every {} s ({} reloads per side per {} s run, file watching off). \
             Baseline without reloads: p99 {}.\n",
            p.reload_every_s,
            self.reloads_per_run,
            p.reload_s,
            self.cell(Figure::LatL7P99, Kind::Mtlsd)
        );
        let _ = writeln!(md, "| figure | unit | mtlsd |\n|---|---|---:|");
        for f in Figure::RELOAD {
            let meta = f.meta();
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                meta.title,
                meta.unit,
                self.cell(f, Kind::Mtlsd)
            );
        }

        let _ = writeln!(md, "\n## How each system was set up\n");
        let _ = writeln!(
            md,
            "Topology for every proxy: load generator → client-side proxy (plaintext in on \
             127.0.0.1, mTLS out) → server-side proxy (mTLS in, plaintext out) → upstream, two \
             processes per system as two hosts would run them. Same certificates for all \
             (ECDSA P-256 leaves from mtlsd-devca, one CA), TLS 1.3 only, client certificates \
             required and verified, server name checked. Upstream (own process): the tonic echo \
             service of mtlsd-testsvc (h2c), a TCP echo, a TCP sink.\n"
        );
        for kind in Kind::ALL {
            let _ = writeln!(
                md,
                "* **{}** ({}):",
                kind.name(),
                self.versions
                    .get(kind.name())
                    .map(String::as_str)
                    .unwrap_or("-")
            );
            for s in kind.settings() {
                let _ = writeln!(md, "  * {s}");
            }
        }
        let _ = writeln!(
            md,
            "* OpenSSL: {}",
            self.versions
                .get("openssl")
                .map(String::as_str)
                .unwrap_or("?")
        );

        let _ = writeln!(md, "\n## Method\n");
        let _ = writeln!(
            md,
            "* Latency: one gRPC channel (one HTTP/2 connection from the generator), unary \
             `Echo/Unary` with a 1,024-byte payload, {} calls/s on a fixed timetable kept by a \
             dedicated thread (1 µs timer slack) for {} s after {} s of warm-up; each latency is \
             measured from the call's intended send time (coordinated-omission safe) into an \
             HDR histogram (3 significant digits). Every call must return grpc-status 0 and \
             the echoed payload. The generator's own lateness (p99 of intended → actual send) \
             is in the JSON (`generator_send_lag_p99_us`).",
            p.rate_rps, p.latency_s, p.latency_warmup_s
        );
        let _ = writeln!(
            md,
            "* Max rate: closed loop, {} channels × {} calls in flight, {} s after {} s warm-up.",
            p.max_rate_connections,
            p.max_rate_in_flight_per_connection,
            p.max_rate_s,
            p.max_rate_warmup_s
        );
        let _ = writeln!(
            md,
            "* Bulk: one TCP stream written for {} s in 256 KiB writes into a sink that confirms \
             the byte count; bytes per CPU-second use utime+stime of both proxies (all their \
             processes and threads) from /proc/<pid>/stat over the same window.",
            p.bulk_s
        );
        let _ = writeln!(
            md,
            "* New connections: {} loops for {} s, each connection echoes one byte end to end \
             and closes cleanly. Through the pair each plaintext connection makes one mTLS \
             connection between the proxies. mtlsd (rustls defaults) resumes TLS 1.3 sessions \
             and has no setting to turn that off, so its \"resumption off\" row is *resumed* \
             handshakes; the server-side row (a rustls client from the generator with \
             resumption disabled, straight to the server side) is the full-handshake \
             comparison that includes mtlsd.",
            p.connections_concurrency, p.connections_s
        );
        let _ = writeln!(
            md,
            "* Memory: VmRSS from /proc/<pid>/status, summed over a side's processes (nginx: \
             master + workers), on a fresh pair; then {} plaintext connections are opened \
             through the pair's `echo` listener (each echoes a byte, so all {} mTLS connections \
             are up) and held; per connection = (RSS with them − idle) / {}.",
            p.held_connections, p.held_connections, p.held_connections
        );
        if !self.probes.is_empty() {
            let _ = writeln!(
                md,
                "\n## What a rustls client negotiates with each server side\n\n\
                 Two handshakes in a row with a session cache (the second tells whether the \
                 server side resumes; what the pair does also depends on its client side: \
                 stunnel's client has sessionResume = no, mtlsd's cannot turn it off).\n"
            );
            let _ = writeln!(
                md,
                "| system | suite | group | 1st | 2nd |\n|---|---|---|---|---|"
            );
            for (name, v) in &self.probes {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} |",
                    v["first"]["cipher_suite"].as_str().unwrap_or("?"),
                    v["first"]["key_exchange"].as_str().unwrap_or("?"),
                    v["first"]["handshake"].as_str().unwrap_or("?"),
                    v["second"]["handshake"].as_str().unwrap_or("?"),
                );
            }
        }
        md
    }

    fn cell(&self, f: Figure, kind: Kind) -> String {
        match self.stat(f, kind) {
            None => "–".into(),
            Some(s) if s.n > 1 => format!("{}<br>({}–{})", fmt(s.median), fmt(s.min), fmt(s.max)),
            Some(s) => fmt(s.median),
        }
    }

    fn ratio_cell(&self, f: Figure, peer: Kind) -> String {
        if f == Figure::ForeignCpu {
            return String::new();
        }
        match (self.stat(f, Kind::Mtlsd), self.stat(f, peer)) {
            (Some(m), Some(p)) if p.median != 0.0 => {
                let noise = m.n > 1 && p.n > 1 && m.overlaps(&p);
                format!(
                    "{:.2}{}",
                    m.median / p.median,
                    if noise { " ~" } else { "" }
                )
            }
            (Some(m), Some(p)) if m.median == 0.0 && p.median == 0.0 => "=".into(),
            _ => "–".into(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Goal {
    pub(crate) goal: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

/// Writes `<base>.json` and `<base>.md` (the chart, `<base>.png`, is
/// chart's).
pub(crate) fn write(results: &Results, base: &Path) -> anyhow::Result<()> {
    let with = |ext: &str| -> PathBuf { base.with_extension(ext) };
    std::fs::write(
        with("json"),
        serde_json::to_string_pretty(&results.to_json())? + "\n",
    )?;
    std::fs::write(with("md"), results.to_markdown())?;
    Ok(())
}
