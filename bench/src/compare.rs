//! `mtlsd-bench compare`: mtlsd side by side with HAProxy, nginx, Caddy
//! and stunnel on this machine (issues 7 and 15).
//!
//! Repetitions are interleaved — every system once, then every system
//! again — so slow drift of the machine spreads over all systems instead
//! of landing on one. Each system is started fresh for each repetition.
//! The counts (issue 15) are taken in the first repetition only, at the
//! end of the system's run (strace, context switches) and on a pair of
//! its own under callgrind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::counts::{self, IN_FLIGHT, Profiled, SystemCounts};
use crate::load::{self, Dial};
use crate::procfs;
use crate::results::{Figure, Params, Results};
use crate::support;
use crate::systems::{self, Binaries, Kind, Launch, Material, Pair};
use crate::upstream::Upstream;
use crate::{chart, report};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// One connection-rate run through `dial`, with the CPU seconds of the
/// pair (client side, server side) over its measured part.
async fn connection_rate(
    dial: Dial,
    p: &Params,
    cpu: &Cpu,
) -> anyhow::Result<(load::Counted, Option<(f64, f64)>)> {
    let mut marks = Vec::new();
    let counted = load::connections(
        dial,
        p.connections_concurrency,
        secs(p.connections_s),
        200_000,
        || marks.push(cpu.now()),
    )
    .await?;
    let used = (marks.len() == 2).then(|| Cpu::between(marks[0], marks[1]));
    Ok((counted, used))
}

/// CPU seconds of a pair's client and server side.
#[derive(Debug, Clone)]
struct Cpu {
    client: Vec<i32>,
    server: Vec<i32>,
}

impl Cpu {
    fn of(pair: &Pair) -> Self {
        Self {
            client: pair.client.as_ref().map(|i| i.pids()).unwrap_or_default(),
            server: pair.server.as_ref().map(|i| i.pids()).unwrap_or_default(),
        }
    }
    fn now(&self) -> (f64, f64) {
        (
            procfs::cpu_seconds(&self.client),
            procfs::cpu_seconds(&self.server),
        )
    }
    /// (user, system) CPU seconds of both sides together.
    fn split_now(&self) -> (f64, f64) {
        let (cu, cs) = procfs::cpu_split(&self.client);
        let (su, ss) = procfs::cpu_split(&self.server);
        (cu + su, cs + ss)
    }
    /// (client, server) CPU seconds between two samples.
    fn between(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
        (b.0 - a.0, b.1 - a.1)
    }
}

pub(crate) async fn run(
    bins: &Binaries,
    params: &Params,
    out_dir: &Path,
    date: &str,
) -> anyhow::Result<PathBuf> {
    let mut material_dir = tempfile::Builder::new()
        .prefix("mtlsd-bench-certs-")
        .tempdir()?;
    if std::env::var_os("BENCH_KEEP").is_some() {
        material_dir.disable_cleanup(true);
    }
    let m = Material::new(material_dir.path())?;
    let up = Upstream::start()?;
    let mut results = Results::new(params, bins, date)?;
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| params.systems.iter().any(|s| s == k.name()))
        .collect();
    let started = Instant::now();
    for rep in 0..params.reps {
        for &kind in &kinds {
            eprintln!(
                "[{:>6.1}s] repetition {}/{}: {}",
                started.elapsed().as_secs_f64(),
                rep + 1,
                params.reps,
                kind.name()
            );
            one_system(kind, rep, bins, params, &m, &up, &mut results)
                .await
                .with_context(|| format!("{} (repetition {})", kind.name(), rep + 1))?;
        }
    }
    for rep in 0..params.reps {
        if !kinds.contains(&Kind::Mtlsd) || !params.wants("reload") {
            break;
        }
        eprintln!(
            "[{:>6.1}s] reload under load {}/{}",
            started.elapsed().as_secs_f64(),
            rep + 1,
            params.reps
        );
        reload_under_load(bins, params, &m, &up, &mut results)
            .await
            .context("reload under load")?;
    }
    results.finish(started.elapsed());
    let base = out_dir.join(date);
    report::write(&results, &base)?;
    chart::draw(&results, &base.with_extension("png"))?;
    Ok(base)
}

async fn one_system(
    kind: Kind,
    rep: usize,
    bins: &Binaries,
    p: &Params,
    m: &Material,
    up: &Upstream,
    r: &mut Results,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let verbose = std::env::var_os("BENCH_VERBOSE").is_some();
    let phase = |what: &str| {
        if verbose {
            eprintln!("    {:>5.1}s {what}", t0.elapsed().as_secs_f64());
        }
    };
    let launch = Launch {
        watch: true,
        callgrind: None,
    };
    let pair = systems::start(kind, bins, m, &up.addrs, &launch)?;
    phase("started");
    let cpu = Cpu::of(&pair);
    // Everything of ours: this process (the generator), the upstream, the pair.
    let ours: Vec<i32> = [std::process::id() as i32, up.pid()]
        .into_iter()
        .chain(cpu.client.iter().copied())
        .chain(cpu.server.iter().copied())
        .collect();
    // The proxies' neighbours on the same cores: the load generator (this
    // process) and the upstream.
    let neighbour_pids = [std::process::id() as i32, up.pid()];
    let (busy0, ours0, wall0) = (
        procfs::machine_busy_seconds(),
        procfs::cpu_seconds(&ours),
        Instant::now(),
    );
    let ep = pair.endpoints.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut errors = 0u64;

    // Memory first, on a fresh pair: idle, then with connections held
    // (L4 systems: through their `echo` listener).
    if kind.is_proxy() && p.wants("memory") {
        let rss = |side: &Option<systems::Instance>| {
            side.as_ref()
                .map(|i| procfs::rss_kib(&i.pids()))
                .unwrap_or(0)
        };
        let (idle_c, idle_s) = (rss(&pair.client), rss(&pair.server));
        r.add(Figure::RssIdleClient, kind, idle_c as f64 * 1024.0 / 1e6);
        r.add(Figure::RssIdleServer, kind, idle_s as f64 * 1024.0 / 1e6);
        if let Some(l4) = &ep.l4 {
            let held = load::hold(l4.echo, p.held_connections)
                .await
                .context("holding connections")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (busy_c, busy_s) = (rss(&pair.client), rss(&pair.server));
            let n = held.len() as f64;
            r.add(
                Figure::RssConnClient,
                kind,
                busy_c.saturating_sub(idle_c) as f64 / n,
            );
            r.add(
                Figure::RssConnServer,
                kind,
                busy_s.saturating_sub(idle_s) as f64 / n,
            );
            let anon = |side: &Option<systems::Instance>| {
                side.as_ref()
                    .map(|i| procfs::rss_anon_kib(&i.pids()))
                    .unwrap_or(0)
            };
            r.note_anon(kind, anon(&pair.client), anon(&pair.server));
            drop(held);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if rep == 0
            && let Some(server_echo) = ep.server_echo
        {
            let probe = systems::probe(server_echo, m)
                .await
                .context("handshake probe")?;
            r.probes.insert(kind.name().to_owned(), probe);
        }
    }

    phase("memory");
    // Latency at a fixed open-loop rate, L7 then L4.
    let mut modes: Vec<(bool, std::net::SocketAddr)> = Vec::new();
    if let Some(l7) = ep.grpc_l7 {
        modes.push((true, l7));
    }
    if let Some(l4) = ep
        .l4
        .as_ref()
        .filter(|_| kind.is_proxy() || ep.grpc_l7.is_none())
    {
        modes.push((false, l4.grpc));
    }
    for &(l7, addr) in modes.iter().filter(|_| p.wants("latency")) {
        let mut at_start = ((0.0, 0.0), Instant::now());
        let lat = load::open_loop(
            addr,
            p.rate_rps,
            secs(p.latency_warmup_s),
            secs(p.latency_s),
            load::Windows::Whole,
            async {
                at_start = (cpu.now(), Instant::now());
                Ok(())
            },
        )
        .await
        .with_context(|| format!("latency at {addr}"))?;
        let (cc, cs) = Cpu::between(at_start.0, cpu.now());
        let wall = at_start.1.elapsed().as_secs_f64().max(1e-9);
        errors += lat.failed;
        let (f50, f99, f999, fcpu) = if l7 {
            (
                Figure::LatL7P50,
                Figure::LatL7P99,
                Figure::LatL7P999,
                Figure::LatL7Cpu,
            )
        } else {
            (
                Figure::LatL4P50,
                Figure::LatL4P99,
                Figure::LatL4P999,
                Figure::LatL4Cpu,
            )
        };
        let direct_both = kind == Kind::Direct;
        for (fig, q) in [(f50, 0.5), (f99, 0.99), (f999, 0.999)] {
            r.add(fig, kind, lat.ms(q));
            if direct_both {
                // Direct has no L4/L7 distinction: the same call, unproxied.
                r.add(fig.l4_twin(), kind, lat.ms(q));
            }
        }
        if kind.is_proxy() {
            r.add(fcpu, kind, (cc + cs) / wall * 100.0);
        }
        r.note_lag(kind, lat.send_lag_p99_us);
    }

    phase("latency");
    // Max unary rate, closed loop.
    for &(l7, addr) in modes.iter().filter(|_| p.wants("rate")) {
        phase(if l7 { "max rate, L7" } else { "max rate, L4" });
        let mut marks = Vec::new();
        let mut split = Vec::new();
        // (neighbours' CPU seconds, machine busy seconds, when) at each end
        // of the measured window.
        let mut around = Vec::new();
        let rate = load::max_rate(
            addr,
            p.max_rate_connections,
            p.max_rate_in_flight_per_connection,
            secs(p.max_rate_warmup_s),
            secs(p.max_rate_s),
            || {
                marks.push(cpu.now());
                split.push(cpu.split_now());
                around.push((
                    procfs::cpu_seconds(&neighbour_pids),
                    procfs::machine_busy_seconds(),
                    Instant::now(),
                ));
            },
        )
        .await
        .with_context(|| format!("max rate at {addr}"))?;
        errors += rate.failed;
        let rps = rate.ok as f64 / rate.seconds;
        let (f, fc) = if l7 {
            (Figure::RateL7, Figure::RateL7PerCpu)
        } else {
            (Figure::RateL4, Figure::RateL4PerCpu)
        };
        r.add(f, kind, rps);
        if kind == Kind::Direct {
            r.add(Figure::RateL4, kind, rps);
        }
        if let ([(near_a, busy_a, at_a), (near_b, busy_b, at_b)], true) = (&around[..], l7) {
            // What the generator and the upstream spend per call is not the
            // proxies' CPU, but it shares their cores: a proxy whose frames
            // cost its neighbours more lowers the maximum rate even at the
            // same CPU of its own.
            if rate.ok > 0 {
                let per_call_us = (near_b - near_a) * 1e6 / rate.ok as f64;
                r.add(Figure::RateL7NeighboursPerCall, kind, per_call_us);
            }
            // A closed loop on shared cores leaves a core idle when every
            // runnable thread waits on one that is busy: what a
            // single-threaded proxy can cost in rate beyond its CPU.
            let capacity = (*at_b - *at_a).as_secs_f64() * procfs::cores() as f64;
            let idle = (1.0 - (busy_b - busy_a) / capacity.max(1e-9)).max(0.0);
            r.add(Figure::RateL7Idle, kind, idle * 100.0);
        }
        if kind.is_proxy() && marks.len() == 2 {
            let (cc, cs) = Cpu::between(marks[0], marks[1]);
            r.add(fc, kind, rate.ok as f64 / (cc + cs).max(0.01));
            if l7 && rate.ok > 0 {
                // Apart, user and system time say whether a gap is in the
                // proxy's own code or in the kernel's socket work.
                let per_call_us = |a: f64, b: f64| (b - a) * 1e6 / rate.ok as f64;
                r.add(
                    Figure::RateL7UserPerCall,
                    kind,
                    per_call_us(split[0].0, split[1].0),
                );
                r.add(
                    Figure::RateL7SystemPerCall,
                    kind,
                    per_call_us(split[0].1, split[1].1),
                );
            }
        }
    }

    phase("max rate");
    // Bulk throughput, one stream.
    if let Some(l4) = ep.l4.as_ref().filter(|_| p.wants("bulk")) {
        let a = cpu.now();
        let sink = l4.sink;
        let dur = secs(p.bulk_s);
        let bulk = tokio::task::spawn_blocking(move || load::bulk(sink, dur, 64 << 30))
            .await?
            .context("bulk")?;
        let (cc, cs) = Cpu::between(a, cpu.now());
        let mib = bulk.bytes as f64 / (1 << 20) as f64;
        r.add(Figure::BulkMibS, kind, mib / bulk.seconds);
        if kind.is_proxy() {
            r.add(Figure::BulkMibPerCpu, kind, mib / (cc + cs).max(0.01));
        }
    }

    phase("bulk");
    // New connections through the pair (each one an mTLS handshake between
    // the two proxies); direct: plain TCP to the echo, for reference.
    let variants: Vec<(Figure, Figure, std::net::SocketAddr)> = match &ep.l4 {
        Some(l4) => vec![
            (Figure::ConnFull, Figure::ConnFullPerCpu, l4.echo),
            (Figure::ConnResume, Figure::ConnResumePerCpu, l4.echo_resume),
        ],
        None => Vec::new(),
    };
    for &(f, fc, addr) in variants.iter().filter(|_| p.wants("connections")) {
        if kind == Kind::Direct && f == Figure::ConnResume {
            continue;
        }
        let (c, used) = connection_rate(Dial::Plain(addr), p, &cpu).await?;
        errors += c.failed;
        r.add(f, kind, c.ok as f64 / c.seconds);
        if let Some((cc, cs)) = used.filter(|_| kind.is_proxy()) {
            r.add(fc, kind, c.ok as f64 / (cc + cs).max(0.01));
        }
        // Let TIME_WAIT sockets and closing connections settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    phase("connections");
    // Full handshakes straight to the server side (rustls client, no
    // resumption): the one handshake figure where mtlsd is full too.
    if let Some(server_echo) = ep.server_echo.filter(|_| p.wants("handshakes")) {
        let dial = Dial::Tls(server_echo, m.rustls_client(false)?);
        let (c, used) = connection_rate(dial, p, &cpu).await?;
        errors += c.failed;
        r.add(Figure::HsServer, kind, c.ok as f64 / c.seconds);
        if let Some((_, cs)) = used {
            r.add(Figure::HsServerPerCpu, kind, c.ok as f64 / cs.max(0.01));
        }
    }
    phase("handshakes");
    let foreign = (procfs::machine_busy_seconds() - busy0) - (procfs::cpu_seconds(&ours) - ours0);
    r.add(
        Figure::ForeignCpu,
        kind,
        (foreign / wall0.elapsed().as_secs_f64() * 100.0).max(0.0),
    );
    r.add(Figure::Errors, kind, errors as f64);
    let counting = rep == 0 && kind.is_proxy() && kind.has_l7() && p.wants("counts");
    let mut counted = SystemCounts::default();
    if counting {
        let l7 = ep.grpc_l7.context("no L7 listener")?;
        counts_on_pair(l7, &cpu, p, pair.dir(), &mut counted)
            .await
            .context("counts")?;
        phase("counts: syscalls, context switches");
    }
    drop(pair);
    phase("stopped");
    tokio::time::sleep(Duration::from_millis(200)).await;
    if counting {
        match instructions(kind, bins, p, m, up).await {
            Ok(per) => counted.instructions = per,
            Err(e) => {
                eprintln!("    {}: no instruction counts: {e:#}", kind.name());
                counted
                    .unavailable
                    .push(format!("instructions (callgrind): {e:#}"));
            }
        }
        phase("counts: instructions");
        for (c, v) in &counted.syscalls {
            r.add(syscalls_figure(*c), kind, v.per_call);
        }
        for (c, v) in &counted.context_switches {
            r.add(ctx_figure(*c), kind, v.per_call);
        }
        for (c, v) in &counted.instructions {
            r.add(instr_figure(*c), kind, v.per_call);
        }
        r.counts.insert(kind.name().to_owned(), counted);
    }
    Ok(())
}

fn syscalls_figure(in_flight: usize) -> Figure {
    if in_flight == 1 {
        Figure::SyscallsC1
    } else {
        Figure::SyscallsC16
    }
}

fn ctx_figure(in_flight: usize) -> Figure {
    if in_flight == 1 {
        Figure::CtxC1
    } else {
        Figure::CtxC16
    }
}

fn instr_figure(in_flight: usize) -> Figure {
    if in_flight == 1 {
        Figure::InstrC1
    } else {
        Figure::InstrC16
    }
}

/// Context switches, then system calls, per L7 call through a running
/// pair, at each concurrency of [`IN_FLIGHT`], over one gRPC channel.
async fn counts_on_pair(
    l7: std::net::SocketAddr,
    cpu: &Cpu,
    p: &Params,
    dir: &Path,
    out: &mut SystemCounts,
) -> anyhow::Result<()> {
    let client = load::channel(l7).await?;
    let pids: Vec<i32> = cpu.client.iter().chain(&cpu.server).copied().collect();
    for (c, n) in IN_FLIGHT.into_iter().zip(p.counts_calls) {
        let s = counts::context_switches(&client, &pids, c, p.counts_warmup, n).await?;
        out.context_switches.insert(c, s);
    }
    for (c, n) in IN_FLIGHT.into_iter().zip(p.counts_calls) {
        let s = counts::syscalls(&client, &pids, c, p.counts_warmup, n, dir).await?;
        out.syscalls.insert(c, s);
    }
    Ok(())
}

/// Instructions per L7 call: a fresh pair of `kind` with every proxy
/// process under callgrind, counted at each concurrency of [`IN_FLIGHT`].
async fn instructions(
    kind: Kind,
    bins: &Binaries,
    p: &Params,
    m: &Material,
    up: &Upstream,
) -> anyhow::Result<std::collections::BTreeMap<usize, counts::Instructions>> {
    let profiles = tempfile::Builder::new()
        .prefix("mtlsd-bench-callgrind-")
        .tempdir()?;
    let launch = Launch {
        watch: true,
        callgrind: Some(profiles.path().to_owned()),
    };
    let pair = systems::start(kind, bins, m, &up.addrs, &launch)?;
    let l7 = pair.endpoints.grpc_l7.context("no L7 listener")?;
    // Let the workers of a forking server (nginx) come up under valgrind.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = Cpu::of(&pair);
    let profiled = Profiled {
        client: &cpu.client,
        server: &cpu.server,
        dir: profiles.path(),
        functions: kind == Kind::Mtlsd,
    };
    let client = load::channel(l7).await?;
    let mut out = std::collections::BTreeMap::new();
    for (c, n) in IN_FLIGHT.into_iter().zip(p.callgrind_calls) {
        let i = counts::instructions(&client, &profiled, c, p.callgrind_warmup, n).await?;
        out.insert(c, i);
    }
    drop(client);
    drop(pair);
    // BENCH_KEEP=1 keeps the callgrind dumps too, for callgrind_annotate.
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("kept callgrind dumps in {}", profiles.keep().display());
    }
    Ok(out)
}

/// mtlsd only: the L7 latency run in windows of `reload_window_s` that
/// alternate between quiet and reloading: in each odd window both sides
/// rotate their certificate and get SIGHUP every `reload_every_s`. The
/// p99 during reloads is then read against the p99 of the same run's
/// quiet windows, so a stall of the machine lands on both sides of the
/// ratio instead of on one run of two.
async fn reload_under_load(
    bins: &Binaries,
    p: &Params,
    m: &Material,
    up: &Upstream,
    r: &mut Results,
) -> anyhow::Result<()> {
    let launch = Launch {
        watch: false,
        callgrind: None,
    };
    let pair = systems::start(Kind::Mtlsd, bins, m, &up.addrs, &launch)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = pair.endpoints.grpc_l7.context("grpc listener")?;
    let pids = [
        pair.client.as_ref().context("client")?.pid(),
        pair.server.as_ref().context("server")?.pid(),
    ];
    let dir = pair.dir().to_owned();
    let reloads = std::cell::Cell::new(0u32);
    // Handshakes the server side completed on its grpc listener over the
    // run: the client side's first pooled connection, then one per
    // renewal of its certificate (the pool makes the new connection
    // before it leaves the old, H4).
    let server_admin = match pair.server.as_ref() {
        Some(systems::Instance::Mtlsd(daemon)) => daemon.admin,
        _ => None,
    };
    let handshakes = || async move { support::grpc_handshakes(server_admin?, "grpc").await };
    let window = secs(p.reload_window_s);
    let reload_windows = reload_windows(p);
    // Reloads per reloading window, each in the middle of its
    // `reload_every_s` slot, so the last is half a slot before the next
    // quiet window.
    let per_window = (p.reload_window_s / p.reload_every_s).floor().max(1.0) as u32;
    // Every renewal's certificates are minted before the load starts: at
    // the reload itself the bench only writes files and signals, so the
    // latency measured around it is mtlsd's, not the key generation's.
    let renewals = (0..reload_windows * per_window)
        .map(|_| {
            ["client", "server"].map(|side| support::leaf(&m.ca, &format!("bench {side} host")))
        })
        .map(|[c, s]| Ok([c?, s?]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Scraped outside the measured windows: a scrape is work for the
    // server side's one thread.
    let at_start = handshakes().await;
    let during = async {
        // The load's windows start when this future is first polled.
        let start = Instant::now();
        let mut renewals = renewals.iter();
        for k in 0..reload_windows {
            // Window 2k is quiet; window 2k + 1 reloads.
            let reloading_from = start + window * (2 * k + 1);
            for slot in 0..per_window {
                let at =
                    reloading_from + secs(p.reload_every_s) * slot + secs(p.reload_every_s / 2.0);
                tokio::time::sleep_until(at.into()).await;
                let leaves = renewals
                    .next()
                    .context("a renewal minted for every reload")?;
                for ((side, pid), next) in ["client", "server"].into_iter().zip(pids).zip(leaves) {
                    let (crt, key) = systems::mtlsd::identity_paths(&dir, side);
                    // A renewal: new key and serial, the same names.
                    support::replace(&key, &next.key_pem, 0o600)?;
                    support::replace(&crt, &next.cert_pem, 0o644)?;
                    kill(Pid::from_raw(pid), Signal::SIGHUP)?;
                }
                reloads.set(reloads.get() + 1);
            }
        }
        Ok(())
    };
    // Exactly the windows are measured: no separate measured tail.
    let lat = load::open_loop(
        addr,
        p.rate_rps,
        secs(p.latency_warmup_s),
        window * (2 * reload_windows),
        load::Windows::Alternate(window),
        during,
    )
    .await?;
    let window_handshakes = match (at_start, handshakes().await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let (during, quiet) = (lat.window_ms(true, 0.99), lat.window_ms(false, 0.99));
    r.add(Figure::ReloadFailed, Kind::Mtlsd, lat.failed as f64);
    r.add(Figure::ReloadP99, Kind::Mtlsd, during);
    r.add(Figure::ReloadQuietP99, Kind::Mtlsd, quiet);
    r.add(
        Figure::ReloadP99Ratio,
        Kind::Mtlsd,
        during / quiet.max(1e-6),
    );
    r.add(Figure::ReloadP999, Kind::Mtlsd, lat.window_ms(true, 0.999));
    r.add(Figure::ReloadMax, Kind::Mtlsd, lat.window_ms(true, 1.0));
    // The p99s mix the reloads with the machine's stalls, which fall
    // anywhere in either kind of window; this count looks only right
    // after each reload, and at the same moments of the quiet windows.
    let moments: Vec<Duration> = (0..per_window)
        .map(|slot| secs(p.reload_every_s) * slot + secs(p.reload_every_s / 2.0))
        .collect();
    let [slow_quiet, slow_after] = lat.slow_after(
        window,
        &moments,
        Duration::from_millis(50),
        Duration::from_secs_f64(quiet / 1e3),
    );
    r.add(Figure::ReloadSlowAfter, Kind::Mtlsd, slow_after as f64);
    r.add(Figure::ReloadSlowQuiet, Kind::Mtlsd, slow_quiet as f64);
    if let Some(count) = window_handshakes {
        r.add(Figure::ReloadHandshakes, Kind::Mtlsd, count);
    }
    r.reloads_per_run = reloads.get();
    Ok(())
}

/// How many windows with reloads a run has (as many quiet ones
/// alternate with them): `reload_s` of reloading in all.
fn reload_windows(p: &Params) -> u32 {
    (p.reload_s / p.reload_window_s).round().max(1.0) as u32
}
