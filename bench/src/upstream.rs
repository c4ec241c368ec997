//! The upstream daemons behind every system, in their own process so
//! that neither the load generator nor the proxies share its runtime:
//!
//! * `grpc`: the tonic echo service from `mtlsd-testsvc` (h2c, TCP_NODELAY);
//! * `echo`: a TCP echo (connection setup and memory figures);
//! * `sink`: reads and discards until EOF, then answers with the byte
//!   count as a big-endian u64 (bulk throughput).
//!
//! `mtlsd-bench upstream` prints one JSON line with the three addresses
//! and runs until its standard input closes.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};

use anyhow::Context;
use mtlsd_testsvc::proto::echo_server::EchoServer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Bytes per read in the sink, and per write in the bulk sender.
pub(crate) const BULK_CHUNK: usize = 256 * 1024;

/// Runs the upstream servers until stdin closes (the parent went away).
pub(crate) async fn serve() -> anyhow::Result<()> {
    // The test service of mtlsd-testsvc, with TCP_NODELAY on accepted
    // connections as every production gRPC server sets it (without it,
    // a proxy that delays its ACKs meets Nagle: 40 ms stalls).
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse()?)?
        .with_nodelay(Some(true));
    let grpc = incoming.local_addr()?;
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(EchoServer::new(mtlsd_testsvc::EchoService))
            .serve_with_incoming(incoming)
            .await;
    });
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let sink = StdListener::bind("127.0.0.1:0")?;
    let sink_addr = sink.local_addr()?;
    std::thread::spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || sink_one(stream));
        }
    });
    println!(
        "{}",
        serde_json::json!({"grpc": grpc.to_string(), "echo": echo_addr.to_string(), "sink": sink_addr.to_string()})
    );
    std::io::stdout().flush()?;
    // Until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    })
    .await?;
    Ok(())
}

fn sink_one(mut stream: std::net::TcpStream) {
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Where the upstream servers listen: what a server side forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamAddrs {
    pub(crate) grpc: SocketAddr,
    pub(crate) echo: SocketAddr,
    pub(crate) sink: SocketAddr,
}

/// A running upstream process; it exits when this is dropped.
#[derive(Debug)]
pub(crate) struct Upstream {
    child: Child,
    pub(crate) addrs: UpstreamAddrs,
}

impl Upstream {
    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("upstream")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the upstream process")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let v: serde_json::Value =
            serde_json::from_str(&line).context("upstream did not report its addresses")?;
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            Ok(v[k].as_str().context("address")?.parse()?)
        };
        Ok(Self {
            addrs: UpstreamAddrs {
                grpc: addr("grpc")?,
                echo: addr("echo")?,
                sink: addr("sink")?,
            },
            child,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
