//! What commands print: results on stdout, problems on stderr.
//!
//! A command's output often goes into a pipe (`mtlsd inspect … | head -1`).
//! `println!` panics once the reader has gone; the writers here stop
//! writing instead, quietly, and the command ends with its normal exit
//! code. Problems are text lines on stderr, or JSON lines shaped like the
//! log's with `--log-format json`, so one parser reads both. When stderr
//! is the journal stream (under systemd, e.g. `ExecStartPre=mtlsd check`),
//! each text line starts with its `<N>` priority prefix, so journald ranks
//! it (`journalctl -p err` finds a failed check).

use std::fmt;
use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::LogFormat;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// The format problems are reported in; set once, at start-up. Text until
/// then.
pub fn set_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Writes to stdout; `outln!` and `out!` call this.
pub fn stdout(args: fmt::Arguments<'_>) {
    write_to(&mut io::stdout().lock(), &STDOUT_GONE, args);
}

fn stderr(args: fmt::Arguments<'_>) {
    write_to(&mut io::stderr().lock(), &STDERR_GONE, args);
}

/// Writes `args` unless an earlier write failed. A failed write means the
/// reader closed the pipe (EPIPE; SIGPIPE is ignored in Rust programs) or
/// the stream is otherwise unusable: nothing written later would arrive, so
/// the command goes on without output rather than panicking.
fn write_to(out: &mut impl Write, gone: &AtomicBool, args: fmt::Arguments<'_>) {
    if gone.load(Ordering::Relaxed) {
        return;
    }
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        gone.store(true, Ordering::Relaxed);
    }
}

/// `println!` to stdout that survives a closed pipe.
macro_rules! outln {
    () => {
        $crate::commands::out::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::commands::out::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `print!` to stdout that survives a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::commands::out::stdout(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// How bad a reported problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Warn => "WARN",
        }
    }

    /// `text` as written to stderr: on the journal stream, every line
    /// starts with `<3>` or `<4>`.
    fn rank(self, text: &str) -> String {
        if !crate::logging::stderr_is_journal() {
            return text.to_owned();
        }
        let prefix = crate::logging::priority_prefix(match self {
            Self::Error => tracing::Level::ERROR,
            Self::Warn => tracing::Level::WARN,
        });
        text.split_inclusive('\n')
            .map(|line| format!("{prefix}{line}"))
            .collect()
    }
}

/// A problem a command reports: `mtlsd COMMAND: MESSAGE`, then one
/// indented `- item` line per entry of `items`. As JSON: one line with
/// `level`, `command`, `message` and, when there are any, `problems`.
pub fn report(level: Level, command: &str, message: &str, items: &[String]) {
    match format() {
        LogFormat::Text => {
            let mut text = format!("mtlsd {command}: {message}\n");
            for item in items {
                text.push_str(&format!("  - {item}\n"));
            }
            stderr(format_args!("{}", level.rank(&text)));
        }
        LogFormat::Json => {
            let mut line = json_line(level, message);
            line["command"] = command.into();
            if !items.is_empty() {
                line["problems"] = items.into();
            }
            stderr(format_args!("{line}\n"));
        }
    }
}

/// A line that belongs to the report before it: indented text, or its own
/// JSON line.
pub fn detail(level: Level, command: &str, message: &str) {
    match format() {
        LogFormat::Text => stderr(format_args!("{}", level.rank(&format!("  {message}\n")))),
        LogFormat::Json => {
            let mut line = json_line(level, message);
            line["command"] = command.into();
            stderr(format_args!("{line}\n"));
        }
    }
}

/// The error that ends the program: `mtlsd: error: …`, or a JSON line.
pub fn fatal(message: &str) {
    match format() {
        LogFormat::Text => stderr(format_args!(
            "{}",
            Level::Error.rank(&format!("mtlsd: error: {message}\n"))
        )),
        LogFormat::Json => stderr(format_args!("{}\n", json_line(Level::Error, message))),
    }
}

/// The fields every log line has, as `tracing_subscriber`'s JSON format
/// writes them.
fn json_line(level: Level, message: &str) -> serde_json::Value {
    serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": level.as_str(),
        "message": message,
        "target": "mtlsd",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone.
    struct ClosedPipe(usize);

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0 += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_stops_output_without_panicking() {
        let gone = AtomicBool::new(false);
        let mut pipe = ClosedPipe(0);
        write_to(&mut pipe, &gone, format_args!("first\n"));
        write_to(&mut pipe, &gone, format_args!("second\n"));
        assert!(gone.load(Ordering::Relaxed));
        assert_eq!(pipe.0, 1, "writes after the first failure are skipped");
    }
}
