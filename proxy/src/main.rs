//! The `mtlsd` binary: parse the command line, set up logging, run the
//! command, print errors for humans.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mtlsd::commands::{Cli, dispatch, out};

/// mimalloc instead of glibc's malloc. A reload of a big inventory
/// allocates and frees hundreds of thousands of small strings; with glibc
/// that was most of the reload's time (malloc, free and consolidation),
/// and freed memory stayed in the process, so RSS grew with every reload.
/// mimalloc's thread-local free lists make those allocations cheap and it
/// returns freed pages to the system. Built with `no_thp`: where the
/// kernel's transparent huge pages are on "madvise", mimalloc's huge-page
/// arenas raised an idle daemon's RSS from 12 to 19 MB for no speed gain.
/// Figures: bench/results/*-fleet.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    out::set_format(cli.log_format);
    mtlsd::logging::init(cli.log_format);
    let prepared = cli.prepare();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(prepared.worker_threads())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            out::fatal(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli, prepared)) {
        Ok(code) => code,
        Err(e) => {
            out::fatal(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}
