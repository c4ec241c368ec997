//! `mtlsd-bench`: measurements that tests must not assert as timings.
//!
//! Each subcommand drives a real, release-built `mtlsd` as an operator
//! would (files, signals, sockets) and reports medians and spreads, so a
//! figure can be compared across runs and machines of the same kind.

#![forbid(unsafe_code)]

mod reload;
mod support;

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
    }
    Ok(())
}
