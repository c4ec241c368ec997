//! The `mtlsd` binary: parse the command line, set up logging, run the
//! command, print errors for humans.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use std::io::IsTerminal;

use clap::Parser;
use mtlsd::commands::{Cli, LogFormat, dispatch, out};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    out::set_format(cli.log_format);
    init_logging(cli.log_format);
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

/// Logs go to stderr; `MTLSD_LOG` takes an env-filter directive
/// (default `info`). Text logs are coloured only on a terminal, and never
/// with `NO_COLOR` set (no-color.org): a log redirected to a file or the
/// journal carries no escape codes.
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MTLSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
