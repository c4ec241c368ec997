//! The report of a comparison run: the JSON (every sample), the Markdown
//! table with mtlsd/peer ratios and the goals of issues 7 and 15,
//! reported (never asserted), the counts per call (issue 15), with how
//! each system was set up and measured.

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
            "counts": self.counts,
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

    /// The goals of issues 7 and 15 against this run's medians.
    pub(crate) fn goals(&self) -> Vec<Goal> {
        let mut out = Vec::new();
        let best = |f: Figure, peers: &[Kind], higher: bool| -> Option<(Kind, f64)> {
            peers
                .iter()
                .filter_map(|&k| self.median(f, k).map(|v| (k, v)))
                .reduce(|a, b| if (b.1 > a.1) == higher { b } else { a })
        };
        for (p99, label, peers) in [
            (Figure::LatL7P99, "L7", &Kind::L7_PEERS[..]),
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
            (Figure::RateL7, "L7", &Kind::L7_PEERS[..]),
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
        // Issue 15.
        for peer in [Kind::Haproxy, Kind::Caddy] {
            let f = Figure::RateL7PerCpu;
            if let (Some(m), Some(h)) = (self.median(f, Kind::Mtlsd), self.median(f, peer)) {
                out.push(Goal {
                    goal: format!(
                        "issue 15: L7 calls per proxy CPU-second ≥ 1.2× {}",
                        peer.name()
                    ),
                    measured: format!("{:.2}× ({m:.0} vs {h:.0} calls/CPU-s)", m / h),
                    met: m / h >= 1.2,
                });
            }
        }
        for (f, label) in [
            (Figure::SyscallsC1, "1 in flight"),
            (Figure::SyscallsC16, "16 in flight"),
        ] {
            if let (Some(m), Some(h)) = (self.median(f, Kind::Mtlsd), self.median(f, Kind::Haproxy))
            {
                out.push(Goal {
                    goal: format!("issue 15: system calls per L7 call (pair) ≤ HAProxy's, {label}"),
                    measured: format!("{:.2}× ({} vs {})", m / h, fmt(m), fmt(h)),
                    met: m <= h,
                });
            }
        }
        // "In every run": the worst repetition's ratio, each against its
        // own quiet windows, and the failed calls of all of them.
        if let (Some(ratio), Some(failed)) = (
            self.stat(Figure::ReloadP99Ratio, Kind::Mtlsd),
            self.samples
                .get(&(Figure::ReloadFailed, Kind::Mtlsd))
                .map(|runs| runs.iter().sum::<f64>()),
        ) {
            out.push(Goal {
                goal: "issue 15: p99 during reloads ≤ 1.5× the p99 between them (same run) in every run, zero failed calls"
                    .into(),
                measured: format!(
                    "worst run {:.2}×, median {:.2}× ({} runs), {failed:.0} failed",
                    ratio.max, ratio.median, ratio.n
                ),
                met: ratio.max <= 1.5 && failed == 0.0,
            });
        }
        out
    }

    /// The counts section: totals per call, the top system calls per
    /// system, mtlsd's top functions, what a second worker does.
    fn counts_markdown(&self, md: &mut String) {
        if let Some(s) = self.second_worker() {
            let _ = writeln!(md, "\n## A second worker thread (mtlsd-2w)\n\n{s}");
        }
        if self.counts.is_empty() {
            return;
        }
        let p = &self.params;
        let _ = writeln!(md, "\n## Counts per L7 call (issue 15)\n");
        let _ = writeln!(
            md,
            "Counts over a fixed number of 1 KiB unary calls through the `grpc` listener, \
             both proxies of the pair together, after a warm-up; they do not move with the \
             machine's noise as the timed figures do. Also in the table above (rows \
             *count: …*).\n"
        );
        // In the report's order of systems.
        let systems: Vec<&String> = Kind::ALL
            .iter()
            .filter_map(|k| self.counts.get_key_value(k.name()).map(|(n, _)| n))
            .collect();
        let mut head = String::from("| per L7 call |");
        let mut rule = String::from("|---|");
        for s in &systems {
            head.push_str(&format!(" {s} |"));
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        let rows: [(&str, Figure); 6] = [
            ("system calls, 1 in flight", Figure::SyscallsC1),
            ("system calls, 16 in flight", Figure::SyscallsC16),
            ("user instructions, 1 in flight", Figure::InstrC1),
            ("user instructions, 16 in flight", Figure::InstrC16),
            ("context switches, 1 in flight", Figure::CtxC1),
            ("context switches, 16 in flight", Figure::CtxC16),
        ];
        for (label, f) in rows {
            let mut row = format!("| {label} |");
            for s in &systems {
                let v = Kind::ALL
                    .iter()
                    .find(|k| k.name() == s.as_str())
                    .and_then(|&k| self.median(f, k));
                row.push_str(&format!(
                    " {} |",
                    v.map(fmt).unwrap_or_else(|| "n/a".into())
                ));
            }
            let _ = writeln!(md, "{row}");
        }
        for (name, c) in &self.counts {
            for why in &c.unavailable {
                let _ = writeln!(md, "\n{name}: n/a — {why}");
            }
        }

        // The top system calls: each system's six most frequent at 1 in
        // flight, and the same names for every system.
        let mut names: Vec<String> = Vec::new();
        for c in self.counts.values() {
            if let Some(sc) = c.syscalls.get(&1) {
                let mut v: Vec<(&String, &f64)> = sc.by_syscall_per_call.iter().collect();
                v.sort_by(|a, b| b.1.total_cmp(a.1));
                for (n, _) in v.into_iter().take(6) {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
        if !names.is_empty() {
            let _ = writeln!(
                md,
                "\nSystem calls per L7 call by name (1 in flight / 16 in flight), each \
                 system's six most frequent; every name in the JSON (`counts`).\n"
            );
            let _ = writeln!(md, "{}", head.replacen("per L7 call", "syscall", 1));
            let _ = writeln!(md, "{rule}");
            for n in &names {
                let mut row = format!("| {n} |");
                for s in &systems {
                    let c = &self.counts[*s];
                    let at = |k: usize| {
                        c.syscalls
                            .get(&k)
                            .map(|x| fmt(x.by_syscall_per_call.get(n).copied().unwrap_or(0.0)))
                            .unwrap_or_else(|| "–".into())
                    };
                    row.push_str(&format!(" {} / {} |", at(1), at(16)));
                }
                let _ = writeln!(md, "{row}");
            }
        }

        if let Some(m) = self.counts.get("mtlsd") {
            let top1 = m.instructions.get(&1).map(|i| &i.top_functions);
            let top16 = m.instructions.get(&16).map(|i| &i.top_functions);
            if let Some(top1) = top1.filter(|t| !t.is_empty()) {
                let _ = writeln!(
                    md,
                    "\nmtlsd's ten functions with the most self instructions (both sides, \
                     callgrind), per L7 call; the top {} at each concurrency are in the JSON.\n",
                    top1.len()
                );
                let _ = writeln!(
                    md,
                    "| function | Ir/call, 1 in flight | share | Ir/call, 16 in flight | share |\n|---|---:|---:|---:|---:|"
                );
                for f in top1.iter().take(10) {
                    let at16 = top16.and_then(|t| t.iter().find(|g| g.name == f.name));
                    let _ = writeln!(
                        md,
                        "| `{}` | {} | {:.1} % | {} | {} |",
                        f.name.replace('|', "\\|"),
                        fmt(f.self_ir_per_call),
                        f.share * 100.0,
                        at16.map(|g| fmt(g.self_ir_per_call))
                            .unwrap_or_else(|| "–".into()),
                        at16.map(|g| format!("{:.1} %", g.share * 100.0))
                            .unwrap_or_else(|| "–".into()),
                    );
                }
            }
        }
        let _ = writeln!(md, "\nMethod of the counts:\n");
        let _ = writeln!(
            md,
            "* Every count: one gRPC channel from the generator to the client side, 1 KiB unary \
             `Echo/Unary`, a closed loop with exactly 1 or 16 calls in flight over a fixed \
             number of calls, each of which must succeed; before each count {} calls at the \
             same concurrency warm the pair up (pooled connections, buffers). Repetition 1 \
             only: they are counts. Both proxies of the pair are counted together, every \
             process (nginx: master and workers) and every thread.",
            p.counts_warmup
        );
        let _ = writeln!(
            md,
            "* System calls: `strace -c -f -U name,calls` attached (`-p`) to every process of \
             both sides, every thread traced before the first counted call (checked in \
             /proc/<pid>/task/*/status TracerPid), {} calls at 1 in flight and {} at 16, then \
             SIGINT to strace and its table read; per call = all system calls / calls. strace \
             slows each system call, which may let more events gather per `epoll_wait` at 16 in \
             flight than at full speed: the figure counts, it does not time. `/proc/<pid>/io` \
             would miss recv/send on sockets.",
            p.counts_calls[0], p.counts_calls[1]
        );
        let _ = writeln!(
            md,
            "* User-space instructions: a separate pair, every proxy process started under \
             `valgrind --tool=callgrind` (nginx with `master_process off`, one process: \
             valgrind's gdbserver, which `callgrind_control` talks to, is not set up in \
             workers forked without exec); after the warm-up ({} calls) `callgrind_control -z` on every process, then \
             {} calls at 1 in flight and {} at 16, `callgrind_control -d`, and the dump's \
             `summary:` Ir (instructions executed in user space, all threads) of both sides \
             summed; per call = Ir / calls. Kernel work is not in it (that is what the system \
             calls show). mtlsd's functions: self Ir per function from the same dumps (the \
             release build has line tables, `debug = \"line-tables-only\"`). Caddy runs with \
             GODEBUG=asyncpreemptoff=1 there (callgrind aborts on the Go runtime's preemption \
             signal).",
            p.callgrind_warmup, p.callgrind_calls[0], p.callgrind_calls[1]
        );
        let _ = writeln!(
            md,
            "* Context switches: voluntary + non-voluntary switches summed over \
             /proc/<pid>/task/*/status of both sides before and after {} calls at 1 in flight \
             and {} at 16, no tracer attached; per call = difference / calls.",
            p.counts_calls[0], p.counts_calls[1]
        );
    }

    /// What the second worker does to the maximum L7 rate and to CPU per
    /// call, from this run's medians.
    fn second_worker(&self) -> Option<String> {
        let (r1, r2) = (
            self.median(Figure::RateL7, Kind::Mtlsd)?,
            self.median(Figure::RateL7, Kind::Mtlsd2)?,
        );
        let mut s = format!(
            "With `runtime.worker_threads = 2` on both sides, mtlsd's maximum L7 rate is \
             {} calls/s against {} with one worker ({:.2}×)",
            fmt(r2),
            fmt(r1),
            r2 / r1
        );
        if let (Some(c1), Some(c2)) = (
            self.median(Figure::RateL7PerCpu, Kind::Mtlsd),
            self.median(Figure::RateL7PerCpu, Kind::Mtlsd2),
        ) {
            s.push_str(&format!(
                ", and each call costs {:.2}× the proxy CPU ({} against {} calls per \
                 CPU-second)",
                c1 / c2,
                fmt(c2),
                fmt(c1)
            ));
        }
        if let (Some(a), Some(b)) = (
            self.median(Figure::SyscallsC16, Kind::Mtlsd),
            self.median(Figure::SyscallsC16, Kind::Mtlsd2),
        ) {
            s.push_str(&format!(
                "; system calls per call at 16 in flight: {} against {}",
                fmt(b),
                fmt(a)
            ));
        }
        if let (Some(a), Some(b)) = (
            self.median(Figure::CtxC16, Kind::Mtlsd),
            self.median(Figure::CtxC16, Kind::Mtlsd2),
        ) {
            s.push_str(&format!(", context switches {} against {}", fmt(b), fmt(a)));
        }
        s.push('.');
        let verdict = if r2 / r1 >= 1.1 {
            " On this machine, where the generator and the upstream share the same two cores, \
             the second worker buys rate; a busy host with a spare core can raise it, paying the \
             CPU per call above."
        } else {
            " On this machine, where the generator and the upstream share the same two cores, \
             the second worker does not buy rate; one worker (the default) stays the better \
             choice unless mtlsd alone saturates a core."
        };
        s.push_str(verdict);
        Some(s)
    }

    pub(crate) fn to_markdown(&self) -> String {
        let mut md = String::new();
        let p = &self.params;
        let _ = writeln!(
            md,
            "# mtlsd vs HAProxy, nginx, Caddy, stunnel — {}{}\n",
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
        let mut head = String::from("| figure | unit |");
        let mut rule = String::from("|---|---|");
        for kind in Kind::ALL {
            head.push_str(&format!(" {} |", kind.name()));
            rule.push_str("---:|");
        }
        for peer in Kind::PEERS {
            head.push_str(&format!(" mtlsd/{} |", peer.name()));
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
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

        let _ = writeln!(
            md,
            "\n## Goals of issues 7 and 15 (reported, not asserted)\n"
        );
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
            "The L7 latency run (1,000 rps, open loop) in windows of {} s that alternate between quiet and reloading: \
             in each reloading window both sides get a renewed certificate (new key and serial, same names) \
             and SIGHUP every {} s ({} reloads per side per run, file watching off). Each call counts for the window \
             its send was due in; the ratio is each run's own, so a stall of the machine weighs on both of its sides. \
             For reference, the latency figure's p99 (another run, no reloads): {}.\n",
            p.reload_window_s,
            p.reload_every_s,
            self.reloads_per_run,
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

        self.counts_markdown(&mut md);

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
        for (tool, label) in [
            ("openssl", "OpenSSL"),
            ("strace", "strace (counts)"),
            ("valgrind", "valgrind (counts)"),
        ] {
            let _ = writeln!(
                md,
                "* {label}: {}",
                self.versions.get(tool).map(String::as_str).unwrap_or("?")
            );
        }

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
