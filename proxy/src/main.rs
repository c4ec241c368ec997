//! The `mtlsd` binary: parse the command line, set up logging, run the
//! command, print errors for humans.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use mtlsd::commands::{Cli, dispatch, out};

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
