//! `mtlsd-bench compare`: mtlsd side by side with HAProxy, nginx and
//! stunnel on this machine (issue 7).
//!
//! Repetitions are interleaved — every system once, then every system
//! again — so slow drift of the machine spreads over all systems instead
//! of landing on one. Each system is started fresh for each repetition.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::load::{self, Dial};
use crate::procfs;
use crate::results::{Figure, Params, Results};
use crate::support;
use crate::systems::{self, Binaries, Kind, Material, Pair};
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
    let material_dir = tempfile::Builder::new()
        .prefix("mtlsd-bench-certs-")
        .tempdir()?;
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
    let pair = systems::start(kind, bins, m, &up.addrs, true)?;
    phase("started");
    let cpu = Cpu::of(&pair);
    // Everything of ours: this process (the generator), the upstream, the pair.
    let ours: Vec<i32> = [std::process::id() as i32, up.pid()]
        .into_iter()
        .chain(cpu.client.iter().copied())
        .chain(cpu.server.iter().copied())
        .collect();
    let (busy0, ours0, wall0) = (
        procfs::machine_busy_seconds(),
        procfs::cpu_seconds(&ours),
        Instant::now(),
    );
    let ep = pair.endpoints.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut errors = 0u64;

    // Memory first, on a fresh pair: idle, then with connections held.
    if kind.is_proxy() && p.wants("memory") {
        let rss = |side: &Option<systems::Instance>| {
            side.as_ref()
                .map(|i| procfs::rss_kib(&i.pids()))
                .unwrap_or(0)
        };
        let (idle_c, idle_s) = (rss(&pair.client), rss(&pair.server));
        r.add(Figure::RssIdleClient, kind, idle_c as f64 * 1024.0 / 1e6);
        r.add(Figure::RssIdleServer, kind, idle_s as f64 * 1024.0 / 1e6);
        let held = load::hold(ep.echo, p.held_connections)
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
    let modes: Vec<(bool, std::net::SocketAddr)> = match ep.grpc_l7 {
        Some(l7) if kind.has_l7() && kind.is_proxy() => vec![(true, l7), (false, ep.grpc_l4)],
        Some(l7) => vec![(true, l7)],
        None => vec![(false, ep.grpc_l4)],
    };
    for &(l7, addr) in modes.iter().filter(|_| p.wants("latency")) {
        let mut at_start = ((0.0, 0.0), Instant::now());
        let lat = load::open_loop(
            addr,
            p.rate_rps,
            secs(p.latency_warmup_s),
            secs(p.latency_s),
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
        let mut marks = Vec::new();
        let rate = load::max_rate(
            addr,
            p.max_rate_connections,
            p.max_rate_in_flight_per_connection,
            secs(p.max_rate_warmup_s),
            secs(p.max_rate_s),
            || marks.push(cpu.now()),
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
        if kind.is_proxy() && marks.len() == 2 {
            let (cc, cs) = Cpu::between(marks[0], marks[1]);
            r.add(fc, kind, rate.ok as f64 / (cc + cs).max(0.01));
        }
    }

    phase("max rate");
    // Bulk throughput, one stream.
    if p.wants("bulk") {
        let a = cpu.now();
        let sink = ep.sink;
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
    let variants: &[(Figure, Figure, std::net::SocketAddr)] = &[
        (Figure::ConnFull, Figure::ConnFullPerCpu, ep.echo),
        (Figure::ConnResume, Figure::ConnResumePerCpu, ep.echo_resume),
    ];
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
    drop(pair);
    phase("stopped");
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// mtlsd only: the L7 latency run while both sides rotate their
/// certificate and get SIGHUP every `reload_every_s`.
async fn reload_under_load(
    bins: &Binaries,
    p: &Params,
    m: &Material,
    up: &Upstream,
    r: &mut Results,
) -> anyhow::Result<()> {
    let pair = systems::start(Kind::Mtlsd, bins, m, &up.addrs, false)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = pair.endpoints.grpc_l7.context("grpc listener")?;
    let pids = [
        pair.client.as_ref().context("client")?.pid(),
        pair.server.as_ref().context("server")?.pid(),
    ];
    let dir = pair.dir().to_owned();
    let reloads = std::cell::Cell::new(0u32);
    let during = async {
        let end = Instant::now() + secs(p.reload_s);
        let mut n = 0u32;
        while Instant::now() + secs(p.reload_every_s) <= end {
            tokio::time::sleep(secs(p.reload_every_s / 2.0)).await;
            for (side, pid) in ["client", "server"].into_iter().zip(pids) {
                let (crt, key) = systems::mtlsd::identity_paths(&dir, side);
                let next = support::leaf(&m.ca, &format!("bench {side} host, rotation {n}"))?;
                support::replace(&key, &next.key_pem, 0o600)?;
                support::replace(&crt, &next.cert_pem, 0o644)?;
                kill(Pid::from_raw(pid), Signal::SIGHUP)?;
            }
            n += 1;
            tokio::time::sleep(secs(p.reload_every_s / 2.0)).await;
        }
        reloads.set(n);
        Ok(())
    };
    // Measure exactly the reload window: no separate measured tail.
    let lat = load::open_loop(
        addr,
        p.rate_rps,
        secs(p.latency_warmup_s),
        secs(p.reload_s),
        during,
    )
    .await?;
    r.add(Figure::ReloadFailed, Kind::Mtlsd, lat.failed as f64);
    r.add(Figure::ReloadP99, Kind::Mtlsd, lat.ms(0.99));
    r.add(Figure::ReloadP999, Kind::Mtlsd, lat.ms(0.999));
    r.add(Figure::ReloadMax, Kind::Mtlsd, lat.ms(1.0));
    r.reloads_per_run = reloads.get();
    Ok(())
}
