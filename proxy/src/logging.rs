//! Where log events go, and in what form.
//!
//! Under systemd, stderr is the journal stream (`JOURNAL_STREAM` names its
//! device and inode, and they are stderr's own). Text log events then go
//! to the journal over its native protocol, one entry per event:
//! `PRIORITY` from the level (error 3, warning 4, info 6, debug and trace
//! 7), so `journalctl -p err` finds mtlsd's errors; every structured field
//! as a journal field of its own (`listener` → `LISTENER`, `reason` →
//! `REASON`); and a `MESSAGE` that reads like the text log line without
//! time and level, which the journal records itself. No colour codes. If
//! the journal socket cannot be written to, events go to stderr (the same
//! journal stream) with `<N>` priority prefixes that journald parses, and
//! that is said once.
//!
//! Elsewhere, events go to stderr as text (coloured only on a terminal,
//! never with `NO_COLOR` set) or, with `--log-format json`, as JSON lines,
//! under systemd too. `MTLSD_LOG` takes an env-filter directive (default
//! `info`).

use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written: text for people, JSON lines for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// journald's socket for the native protocol.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The journal's `SYSLOG_IDENTIFIER` for every entry (`journalctl -t mtlsd`).
const SYSLOG_IDENTIFIER: &str = "mtlsd";

/// Sets up the global subscriber for `format`; see the module doc.
pub fn init(format: LogFormat) {
    let filter = || EnvFilter::try_from_env("MTLSD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if format == LogFormat::Json {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .with_writer(io::stderr)
            .json()
            .flatten_event(true)
            .init();
        return;
    }
    if stderr_is_journal() {
        match JournalLayer::connect(Path::new(JOURNAL_SOCKET)) {
            Ok(journal) => tracing_subscriber::registry()
                .with(journal.with_filter(filter()))
                .init(),
            Err(e) => {
                tracing_subscriber::fmt()
                    .with_env_filter(filter())
                    .with_ansi(false)
                    .without_time()
                    .with_writer(PrefixedStderr)
                    .init();
                tracing::warn!(
                    socket = JOURNAL_SOCKET,
                    error = %e,
                    "cannot write to the journal socket; logging to stderr with priority prefixes"
                );
            }
        }
        return;
    }
    let colour = io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(colour)
        .with_writer(io::stderr)
        .init();
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is set
/// and names stderr's own device and inode (a child whose stderr was
/// redirected elsewhere inherits the variable, not the stream).
pub fn stderr_is_journal() -> bool {
    static IS_JOURNAL: OnceLock<bool> = OnceLock::new();
    *IS_JOURNAL.get_or_init(|| {
        let Some((device, inode)) = std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|value| parse_journal_stream(&value))
        else {
            return false;
        };
        stderr_metadata().is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
    })
}

/// `JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

fn stderr_metadata() -> io::Result<std::fs::Metadata> {
    let fd = io::stderr().as_fd().try_clone_to_owned()?;
    std::fs::File::from(fd).metadata()
}

/// The syslog priority of a level, as the journal ranks it.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The `<N>` prefix journald reads from a line on the journal stream.
pub fn priority_prefix(level: Level) -> String {
    format!("<{}>", priority(level))
}

/// Sends each event to journald as one native-protocol datagram.
#[derive(Debug)]
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalLayer {
    /// Opens an unbound datagram socket and checks that `path` takes
    /// datagrams (journald ignores an empty one).
    pub fn connect(path: &Path) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.send_to(&[], path)?;
        Ok(Self {
            socket,
            path: path.to_owned(),
        })
    }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let entry = JournalEntry::of(event);
        if self.socket.send_to(&entry.encode(), &self.path).is_err() {
            // journald is restarting, or the entry is larger than one
            // datagram: stderr is the journal stream too, so the event
            // still arrives there, ranked, as one text line.
            let line = format!("{}\n", entry.text());
            let _ = io::stderr()
                .lock()
                .write_all(&prefixed(entry.priority, line.as_bytes()));
        }
    }
}

/// One journal entry: what an event says, before encoding.
#[derive(Debug, Default)]
struct JournalEntry {
    priority: u8,
    target: String,
    file: Option<String>,
    line: Option<u32>,
    message: String,
    /// Structured fields in the order the event has them, names as given.
    fields: Vec<(String, String)>,
}

impl JournalEntry {
    fn of(event: &Event<'_>) -> Self {
        let meta: &Metadata<'_> = event.metadata();
        let mut entry = Self {
            priority: priority(*meta.level()),
            target: meta.target().to_owned(),
            file: meta.file().map(str::to_owned),
            line: meta.line(),
            ..Self::default()
        };
        event.record(&mut entry);
        entry
    }

    /// The message followed by ` key=value` for every field, as the text
    /// log has it without time and level.
    fn text(&self) -> String {
        let mut text = self.message.clone();
        for (name, value) in &self.fields {
            let _ = if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
                write!(text, " {name}={value:?}")
            } else {
                write!(text, " {name}={value}")
            };
        }
        text
    }

    /// The native protocol: every field length-encoded (values may hold
    /// newlines), names upper-case.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut put = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value);
            out.push(b'\n');
        };
        put("MESSAGE", self.text().as_bytes());
        put("PRIORITY", self.priority.to_string().as_bytes());
        put("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER.as_bytes());
        put("TARGET", self.target.as_bytes());
        if let Some(file) = &self.file {
            put("CODE_FILE", file.as_bytes());
        }
        if let Some(line) = self.line {
            put("CODE_LINE", line.to_string().as_bytes());
        }
        for (name, value) in &self.fields {
            put(&journal_field_name(name), value.as_bytes());
        }
        out
    }
}

impl Visit for JournalEntry {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl JournalEntry {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            // Bridged `log` records: their target and place are metadata.
            name if name.starts_with("log.") => {}
            name => self.fields.push((name.to_owned(), value)),
        }
    }
}

/// Journal fields mtlsd writes itself, and the well-known ones a client
/// may set: an event field of the same name gets an `MTLSD_` prefix
/// instead of overriding them.
const RESERVED_FIELDS: &[&str] = &[
    "MESSAGE",
    "MESSAGE_ID",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "SYSLOG_FACILITY",
    "SYSLOG_PID",
    "SYSLOG_TIMESTAMP",
    "SYSLOG_RAW",
    "TARGET",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_FUNC",
    "ERRNO",
    "INVOCATION_ID",
    "USER_INVOCATION_ID",
    "UNIT",
    "USER_UNIT",
    "TID",
    "DOCUMENTATION",
];

/// A journal field name for an event field: upper-case letters, digits
/// and `_`, not starting with `_` (trusted fields) or a digit, at most 64
/// characters.
fn journal_field_name(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut cleaned = upper
        .trim_start_matches(|c: char| c == '_' || c.is_ascii_digit())
        .to_owned();
    if cleaned.is_empty() {
        cleaned = "FIELD".to_owned();
    }
    if RESERVED_FIELDS.contains(&cleaned.as_str()) {
        cleaned = format!("MTLSD_{cleaned}");
    }
    cleaned.truncate(64);
    cleaned
}

/// `text` with `<N>` before each of its lines.
fn prefixed(priority: u8, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(format!("<{priority}>").as_bytes());
        out.extend_from_slice(line);
    }
    out
}

/// stderr whose every line starts with the event's `<N>` priority prefix.
#[derive(Debug, Clone, Copy)]
struct PrefixedStderr;

impl<'a> MakeWriter<'a> for PrefixedStderr {
    type Writer = PrefixedLine;

    fn make_writer(&'a self) -> PrefixedLine {
        PrefixedLine {
            priority: priority(Level::INFO),
            buffer: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> PrefixedLine {
        PrefixedLine {
            priority: priority(*meta.level()),
            buffer: Vec::new(),
        }
    }
}

/// Collects one event's text and writes it, prefixed, when dropped.
#[derive(Debug)]
struct PrefixedLine {
    priority: u8,
    buffer: Vec<u8>,
}

impl Write for PrefixedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PrefixedLine {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            let _ = io::stderr()
                .lock()
                .write_all(&prefixed(self.priority, &self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    /// Decodes one native-protocol datagram (both field forms).
    fn decode(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut fields = BTreeMap::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n').unwrap();
            let head = &data[..end];
            if let Some(eq) = head.iter().position(|&b| b == b'=') {
                fields.insert(
                    String::from_utf8(head[..eq].to_vec()).unwrap(),
                    head[eq + 1..].to_vec(),
                );
                data = &data[end + 1..];
            } else {
                let name = String::from_utf8(head.to_vec()).unwrap();
                let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap());
                let start = end + 9;
                let stop = start + usize::try_from(len).unwrap();
                fields.insert(name, data[start..stop].to_vec());
                assert_eq!(data[stop], b'\n');
                data = &data[stop + 1..];
            }
        }
        fields
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert_eq!(parse_journal_stream("8:123456"), Some((8, 123_456)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("nonsense"), None);
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        let got: Vec<u8> = [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ]
        .into_iter()
        .map(priority)
        .collect();
        assert_eq!(got, [3, 4, 6, 7, 7]);
        assert_eq!(priority_prefix(Level::ERROR), "<3>");
    }

    #[test]
    fn field_names_become_journal_names() {
        assert_eq!(journal_field_name("listener"), "LISTENER");
        assert_eq!(journal_field_name("not_after"), "NOT_AFTER");
        assert_eq!(journal_field_name("log.target"), "LOG_TARGET");
        assert_eq!(journal_field_name("_pid"), "PID");
        assert_eq!(journal_field_name("priority"), "MTLSD_PRIORITY");
        assert_eq!(journal_field_name("__"), "FIELD");
        assert_eq!(journal_field_name(&"x".repeat(80)).len(), 64);
    }

    #[test]
    fn every_line_of_a_fallback_event_is_ranked() {
        assert_eq!(
            prefixed(3, b"reload rejected\n  - a.pem: bad\n"),
            b"<3>reload rejected\n<3>  - a.pem: bad\n"
        );
    }

    #[test]
    fn an_event_becomes_one_entry_with_priority_fields_and_a_plain_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let journald = UnixDatagram::bind(&path).unwrap();
        journald
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let layer = JournalLayer::connect(&path).unwrap();
        let mut probe = [0u8; 16];
        assert_eq!(journald.recv(&mut probe).unwrap(), 0, "the empty probe");

        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let peer: std::net::SocketAddr = "192.0.2.7:4431".parse().unwrap();
            tracing::error!(
                listener = "web",
                %peer,
                reason = "unknown_ca",
                detail = "two\nlines",
                "TLS handshake refused"
            );
            tracing::info!(generation = 2_u64, "TLS material reloaded");
        });

        let mut buf = vec![0u8; 65_536];
        let n = journald.recv(&mut buf).unwrap();
        let error = decode(&buf[..n]);
        assert_eq!(error["PRIORITY"], b"3");
        assert_eq!(error["LISTENER"], b"web");
        assert_eq!(error["PEER"], b"192.0.2.7:4431");
        assert_eq!(error["REASON"], b"unknown_ca");
        assert_eq!(error["DETAIL"], b"two\nlines");
        assert_eq!(error["SYSLOG_IDENTIFIER"], b"mtlsd");
        assert_eq!(
            String::from_utf8(error["MESSAGE"].clone()).unwrap(),
            "TLS handshake refused listener=web peer=192.0.2.7:4431 reason=unknown_ca \
             detail=\"two\\nlines\""
        );
        assert!(
            error.values().all(|v| !v.contains(&0x1b)),
            "no escape codes"
        );

        let n = journald.recv(&mut buf).unwrap();
        let info = decode(&buf[..n]);
        assert_eq!(info["PRIORITY"], b"6");
        assert_eq!(info["GENERATION"], b"2");
        assert_eq!(info["MESSAGE"], b"TLS material reloaded generation=2");
        assert!(
            !info.keys().any(|k| k.contains("TIME")),
            "the journal records the time: {:?}",
            info.keys()
        );
    }
}
