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
    // One worker (the default) gets tokio's single-threaded scheduler, as
    // linkerd2-proxy does on one core: the multi-threaded one with a single
    // worker still pays for its shared run queue, idle-worker bookkeeping
    // and cross-thread wake-ups on every task switch (bench: fewer
    // instructions and less CPU per gRPC call). Nothing moves threads by
    // this: the reloader was already a task on the only worker, and
    // generations are built on their own thread either way. A key in a
    // token keeps the multi-threaded one (see `Prepared::single_threaded`).
    let mut builder = if prepared.single_threaded() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(prepared.worker_threads());
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            out::fatal(&format!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(dispatch(cli, prepared)) {
        Ok(code) => code,
        Err(e) => {
            out::fatal(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    // Dropping the runtime drops every connection and generation, and with
    // them the token keys; their worker threads then close their sessions.
    // Exiting before they have would run the token library's destructors
    // under them (SoftHSM: a segfault at exit, one time in a dozen).
    drop(runtime);
    mtlsd_reload::wait_for_token_sessions_to_close(TOKEN_CLOSE_BOUND);
    code
}

/// The longest `main` waits at exit for token sessions to close: a hung
/// token must not hold the exit.
const TOKEN_CLOSE_BOUND: std::time::Duration = std::time::Duration::from_secs(2);
