//! Load generators. Every loop is bounded by a deadline and a count.
//!
//! * [`open_loop`]: unary gRPC calls on a fixed timetable; each latency is
//!   measured from the call's *intended* send time, so a stall delays the
//!   clock of every call scheduled behind it (no coordinated omission).
//!   A dedicated thread keeps the timetable (1 µs timer slack, not tokio's
//!   1 ms timer wheel) and hands each call to the runtime when it is due.
//! * [`max_rate`]: closed loop, a fixed number of calls in flight.
//! * [`fixed_calls`]: closed loop, a fixed number of calls (the counts).
//! * [`bulk`]: one TCP stream, written as fast as it goes.
//! * [`connections`]: new connections, each with one echoed byte.
//! * [`hold`]: opens many connections and keeps them open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use mtlsd_testsvc::EchoClient;
use mtlsd_testsvc::proto::Msg;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// The unary request and response payload.
pub(crate) const PAYLOAD: usize = 1024;

/// Calls that have not answered this long after the schedule ended are
/// counted as failed.
const DRAIN: Duration = Duration::from_secs(10);

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 µs .. 60 s, 3 significant digits.
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).unwrap()
}

/// One gRPC channel (one HTTP/2 connection) to `addr`.
pub(crate) async fn channel(addr: SocketAddr) -> anyhow::Result<EchoClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot open a gRPC channel to {addr}"))?;
    Ok(EchoClient::new(channel)
        .max_decoding_message_size(1 << 20)
        .max_encoding_message_size(1 << 20))
}

/// One unary call; `Ok` only for grpc-status 0 and the echoed payload.
async fn call(client: &mut EchoClient<Channel>, payload: &[u8]) -> bool {
    match client
        .unary(Msg {
            payload: payload.to_vec(),
        })
        .await
    {
        Ok(response) => response.get_ref().payload.len() == payload.len(),
        Err(_) => false,
    }
}

/// Latencies of an open-loop run.
#[derive(Debug)]
pub(crate) struct Latency {
    pub(crate) hist: Histogram<u64>,
    /// The calls sent in the even windows (0, 2, …) and in the odd ones,
    /// apart; with [`Windows::Whole`] every call is in the first.
    pub(crate) by_window: [Histogram<u64>; 2],
    pub(crate) failed: u64,
    /// How late the generator's thread woke for its sends (p99, µs).
    pub(crate) send_lag_p99_us: f64,
    /// Each measured call's send (ns after the start of the measured
    /// part) and its latency (ns), in the order they finished.
    pub(crate) calls: Vec<(u128, u64)>,
}

impl Latency {
    pub(crate) fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    /// Like [`Self::ms`], over the calls sent in the even (`odd` false) or
    /// the odd windows.
    pub(crate) fn window_ms(&self, odd: bool, q: f64) -> f64 {
        self.by_window[usize::from(odd)].value_at_quantile(q) as f64 / 1e6
    }

    /// With [`Windows::Alternate`]`(window)`: the calls slower than
    /// `slower_than` whose send fell within `span` after one of `moments`
    /// (offsets into a window), in the even (quiet) windows and in the odd
    /// ones, `[even, odd]`. What happens at those moments of the odd
    /// windows (a reload) then shows apart from the machine's own stalls,
    /// which land on both alike; a p99 mixes the two.
    pub(crate) fn slow_after(
        &self,
        window: Duration,
        moments: &[Duration],
        span: Duration,
        slower_than: Duration,
    ) -> [u64; 2] {
        let window = window.as_nanos().max(1);
        let slower_than = slower_than.as_nanos();
        let mut counts = [0u64; 2];
        for &(sent, latency) in &self.calls {
            if u128::from(latency) <= slower_than {
                continue;
            }
            let into = sent % window;
            let near = moments.iter().any(|m| {
                let m = m.as_nanos();
                into >= m && into < m + span.as_nanos()
            });
            if near {
                counts[usize::from((sent / window) % 2 == 1)] += 1;
            }
        }
        counts
    }
}

/// How the measured part of an open-loop run is split.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Windows {
    /// One histogram for the whole run.
    Whole,
    /// Back-to-back windows of this length from the start of the measured
    /// part, even and odd ones tallied apart: what runs alongside
    /// (reloads) can then be compared with its absence in the same run,
    /// on the same pair and through the same moments of the machine.
    Alternate(Duration),
}

#[derive(Debug)]
struct Tally {
    by_window: [Histogram<u64>; 2],
    /// Each measured call's send, in ns after the start of the measured
    /// part, and its latency in ns (written out with `BENCH_TRACE=FILE`).
    trace: Vec<(u128, u64)>,
    lag: Histogram<u64>,
    failed: u64,
}

/// `rate` calls per second for `duration` (after `warmup`, which is sent
/// the same way but not recorded) over one gRPC channel.
/// `during` runs alongside the measured part (reloads); each call is
/// tallied by the window its send was due in ([`Windows`]).
pub(crate) async fn open_loop<F>(
    addr: SocketAddr,
    rate: u32,
    warmup: Duration,
    duration: Duration,
    windows: Windows,
    during: F,
) -> anyhow::Result<Latency>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let client = channel(addr).await?;
    let period = Duration::from_secs(1) / rate;
    let warm = (warmup.as_secs_f64() * f64::from(rate)).round() as u64;
    let total = warm + (duration.as_secs_f64() * f64::from(rate)).round() as u64;
    let trace_to = std::env::var_os("BENCH_TRACE");
    let tally = Arc::new(Mutex::new(Tally {
        by_window: [histogram(), histogram()],
        trace: Vec::with_capacity(usize::try_from(total).unwrap_or(0)),
        lag: histogram(),
        failed: 0,
    }));
    let outstanding = Arc::new(AtomicU64::new(0));
    let payload: Arc<[u8]> = vec![0xa5u8; PAYLOAD].into();
    let handle = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(5);
    let measured_from = start + period * u32::try_from(warm)?;

    let scheduler = {
        let tally = tally.clone();
        let outstanding = outstanding.clone();
        std::thread::spawn(move || {
            // Wake within a microsecond of the timetable, not 50 µs late.
            let _ = nix::sys::prctl::set_timerslack(1);
            for i in 0..total {
                let due = start + period.mul_f64(i as f64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let lag = due.elapsed();
                let record = i >= warm;
                let into = due.saturating_duration_since(measured_from);
                let odd = match windows {
                    Windows::Whole => false,
                    Windows::Alternate(w) => (into.as_nanos() / w.as_nanos().max(1)) % 2 == 1,
                };
                let mut client = client.clone();
                let tally = tally.clone();
                let payload = payload.clone();
                let outstanding = outstanding.clone();
                outstanding.fetch_add(1, Ordering::SeqCst);
                handle.spawn(async move {
                    let ok = call(&mut client, &payload).await;
                    let latency = due.elapsed();
                    if record {
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
                        t.by_window[usize::from(odd)].saturating_record(ns);
                        t.trace.push((into.as_nanos(), ns));
                        t.lag
                            .saturating_record(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX));
                        if !ok {
                            t.failed += 1;
                        }
                    }
                    outstanding.fetch_sub(1, Ordering::SeqCst);
                });
            }
        })
    };
    tokio::time::sleep_until((measured_from).into()).await;
    during.await?;
    tokio::task::spawn_blocking(move || scheduler.join())
        .await?
        .map_err(|_| anyhow::anyhow!("scheduler thread panicked"))?;
    let drain_until = Instant::now() + DRAIN;
    while outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stuck = outstanding.load(Ordering::SeqCst);
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = trace_to {
        let text: String = t.trace.iter().map(|(a, b)| format!("{a} {b}\n")).collect();
        std::fs::write(path, text)?;
    }
    let mut hist = t.by_window[0].clone();
    hist.add(&t.by_window[1])?;
    Ok(Latency {
        hist,
        by_window: t.by_window.clone(),
        failed: t.failed + stuck,
        send_lag_p99_us: t.lag.value_at_quantile(0.99) as f64 / 1e3,
        calls: std::mem::take(&mut t.trace),
    })
}

/// What a closed-loop run counted: completed calls (max rate) or
/// connections (connection rate), and over how long.
#[derive(Debug)]
pub(crate) struct Counted {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) seconds: f64,
}

/// `conns` channels with `per_conn` calls in flight on each, for `warmup`
/// and then `duration`; `window` is called when the measured part starts
/// and again when it ends (the caller samples CPU there).
pub(crate) async fn max_rate(
    addr: SocketAddr,
    conns: usize,
    per_conn: usize,
    warmup: Duration,
    duration: Duration,
    mut window: impl FnMut(),
) -> anyhow::Result<Counted> {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(channel(addr).await?);
    }
    let payload: Arc<[u8]> = vec![0x5au8; PAYLOAD].into();
    let begin = Instant::now() + warmup;
    let end = begin + duration;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for client in &clients {
        for _ in 0..per_conn {
            let mut client = client.clone();
            let (ok, failed, payload) = (ok.clone(), failed.clone(), payload.clone());
            tasks.spawn(async move {
                while Instant::now() < end {
                    let good = tokio::time::timeout(DRAIN, call(&mut client, &payload))
                        .await
                        .unwrap_or(false);
                    let now = Instant::now();
                    if now >= begin && now < end {
                        if good {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    }
    tokio::time::sleep_until(begin.into()).await;
    window();
    tokio::time::sleep_until(end.into()).await;
    window();
    while tasks.join_next().await.is_some() {}
    Ok(Counted {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: duration.as_secs_f64(),
    })
}

/// Exactly `n` unary calls over `client`'s one channel with `in_flight`
/// of them outstanding at a time (closed loop); every call must succeed
/// (grpc-status 0, payload echoed) and all must be done within
/// `deadline`. Returns the seconds taken.
pub(crate) async fn fixed_calls(
    client: &EchoClient<Channel>,
    n: u64,
    in_flight: usize,
    deadline: Duration,
) -> anyhow::Result<f64> {
    let payload: Arc<[u8]> = vec![0x6bu8; PAYLOAD].into();
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + deadline;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let mut client = client.clone();
        let (issued, failed, payload) = (issued.clone(), failed.clone(), payload.clone());
        tasks.spawn(async move {
            while issued.fetch_add(1, Ordering::Relaxed) < n {
                let good = tokio::time::timeout_at(end.into(), call(&mut client, &payload))
                    .await
                    .unwrap_or(false);
                if !good {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} of {n} calls failed or missed the {:?} deadline",
            deadline
        );
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Bytes that crossed one bulk stream and how long that took.
#[derive(Debug)]
pub(crate) struct Bulk {
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
}

/// Writes to `addr` (a sink, possibly behind proxies) for `duration`, at
/// most `max_bytes`; done when the sink confirms how much it received.
pub(crate) fn bulk(addr: SocketAddr, duration: Duration, max_bytes: u64) -> anyhow::Result<Bulk> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let chunk = vec![0x3cu8; crate::upstream::BULK_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration && sent < max_bytes {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .context("the sink did not confirm the byte count")?;
    let seconds = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    if received != sent {
        bail!("sent {sent} bytes, the sink received {received}");
    }
    Ok(Bulk {
        bytes: received,
        seconds,
    })
}

/// How a new connection is made.
#[derive(Debug, Clone)]
pub(crate) enum Dial {
    /// Plaintext to a client-side proxy (which makes the mTLS connection).
    Plain(SocketAddr),
    /// mTLS straight to a server-side proxy.
    Tls(SocketAddr, Arc<ClientConfig>),
}

/// One connection: connect, echo one byte, close cleanly (half-close,
/// then wait for the far side's close), so no proxy logs an error.
async fn one_connection(dial: &Dial) -> anyhow::Result<()> {
    match dial {
        Dial::Plain(addr) => {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            echo_and_close(&mut s).await
        }
        Dial::Tls(addr, config) => {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let mut s = TlsConnector::from(config.clone())
                .connect(ServerName::try_from("localhost")?, tcp)
                .await?;
            echo_and_close(&mut s).await
        }
    }
}

async fn echo_and_close<S>(s: &mut S) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    s.shutdown().await?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
    Ok(())
}

/// New connections from `concurrency` loops for `duration` (at most
/// `max_count` in all); `window` is called at the start and the end.
pub(crate) async fn connections(
    dial: Dial,
    concurrency: usize,
    duration: Duration,
    max_count: u64,
    mut window: impl FnMut(),
) -> anyhow::Result<Counted> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + duration;
    window();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (ok, failed, started, dial) =
            (ok.clone(), failed.clone(), started.clone(), dial.clone());
        tasks.spawn(async move {
            while Instant::now() < end && started.fetch_add(1, Ordering::Relaxed) < max_count {
                match tokio::time::timeout(Duration::from_secs(10), one_connection(&dial)).await {
                    Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    window();
    Ok(Counted {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds,
    })
}

/// Opens `count` connections through `addr` (each echoes one byte, so it
/// is established end to end) and returns them open.
pub(crate) async fn hold(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"x").await?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            anyhow::Ok(s)
        });
    }
    let mut held = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(joined) = tokio::time::timeout_at(deadline.into(), tasks.join_next())
        .await
        .context("connections not established within 60 s")?
    {
        held.push(joined??);
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> u128 {
        u128::from(n) * 1_000_000
    }

    #[test]
    fn slow_calls_after_the_moments_are_counted_per_kind_of_window() {
        let latency = |calls: Vec<(u128, u64)>| Latency {
            hist: histogram(),
            by_window: [histogram(), histogram()],
            failed: 0,
            send_lag_p99_us: 0.0,
            calls,
        };
        let slow = 3_000_000; // 3 ms
        let fast = 500_000;
        let run = latency(vec![
            // Window 1 (odd, reloading), 1000 ms long: two slow calls in
            // the 50 ms after the moment at 500 ms, one slow just before,
            // one slow after the span, one fast inside it.
            (ms(1000 + 500), slow),
            (ms(1000 + 549), slow),
            (ms(1000 + 499), slow),
            (ms(1000 + 550), slow),
            (ms(1000 + 510), fast),
            // Window 2 (even, quiet): one slow at the same offset.
            (ms(2000 + 520), slow),
            // Window 3 (odd): one more.
            (ms(3000 + 501), slow),
        ]);
        let slower_than = |ms| {
            run.slow_after(
                Duration::from_secs(1),
                &[Duration::from_millis(500)],
                Duration::from_millis(50),
                Duration::from_millis(ms),
            )
        };
        assert_eq!(slower_than(1), [1, 3]);
        // The threshold is strict: calls of exactly it are not slow.
        assert_eq!(slower_than(3), [0, 0]);
    }
}
