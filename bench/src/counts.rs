//! Counts that noise cannot move (issue 15): per proxied L7 call, over a
//! fixed number of calls after a warm-up, for both proxies of a pair
//! together —
//!
//! * system calls (`strace -c -f` attached to every process and thread
//!   of both sides, detached with SIGINT, its summary table parsed);
//! * user-space instructions (every proxy process run under
//!   `valgrind --tool=callgrind`; `callgrind_control -z` after the
//!   warm-up, `-d` after the calls, the dump's `summary:` line read);
//! * context switches (voluntary + non-voluntary, summed over
//!   `/proc/<pid>/task/*/status`, before and after, no tracer attached).
//!
//! A timed figure moves with whatever else the machine runs; these do not
//! (or barely: an idle timer's wake-ups add a few calls per second of
//! run), so a data-path change shows in them even on a noisy machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mtlsd_testsvc::EchoClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

use crate::load;

/// The concurrency levels counted: one call in flight, and sixteen.
pub(crate) const IN_FLIGHT: [usize; 2] = [1, 16];

/// Functions of mtlsd's profile kept in the JSON.
const TOP_FUNCTIONS: usize = 25;

/// Everything counted for one system (repetition 1 only).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct SystemCounts {
    /// By calls in flight.
    pub(crate) syscalls: BTreeMap<usize, Syscalls>,
    pub(crate) instructions: BTreeMap<usize, Instructions>,
    pub(crate) context_switches: BTreeMap<usize, Switches>,
    /// Why a count is missing (e.g. valgrind could not run the binary).
    pub(crate) unavailable: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Syscalls {
    pub(crate) calls: u64,
    pub(crate) total: u64,
    pub(crate) per_call: f64,
    /// System calls of each name per proxied call, both sides.
    pub(crate) by_syscall_per_call: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Instructions {
    pub(crate) calls: u64,
    pub(crate) client_ir: u64,
    pub(crate) server_ir: u64,
    pub(crate) per_call: f64,
    /// The functions with the most self instructions (both sides merged),
    /// per proxied call; filled for mtlsd only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) top_functions: Vec<Function>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Function {
    pub(crate) name: String,
    pub(crate) self_ir_per_call: f64,
    pub(crate) share: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Switches {
    pub(crate) calls: u64,
    pub(crate) voluntary: u64,
    pub(crate) nonvoluntary: u64,
    pub(crate) per_call: f64,
    pub(crate) seconds: f64,
}

/// Generous deadline for `n` calls, slowed by a tracer or valgrind.
fn deadline(n: u64, slow: bool) -> Duration {
    let per_call = if slow { 0.1 } else { 0.01 };
    Duration::from_secs_f64((n as f64 * per_call).max(60.0))
}

/// Voluntary and non-voluntary context switches of every thread of
/// `pids` so far.
fn switches(pids: &[i32]) -> (u64, u64) {
    let mut v = (0, 0);
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            for line in text.lines() {
                let field = |name: &str| {
                    line.strip_prefix(name)
                        .and_then(|r| r.trim().parse::<u64>().ok())
                };
                if let Some(n) = field("voluntary_ctxt_switches:") {
                    v.0 += n;
                } else if let Some(n) = field("nonvoluntary_ctxt_switches:") {
                    v.1 += n;
                }
            }
        }
    }
    v
}

/// Context switches per call: `warmup` calls, then `n` counted ones.
pub(crate) async fn context_switches(
    client: &EchoClient<Channel>,
    pids: &[i32],
    in_flight: usize,
    warmup: u64,
    n: u64,
) -> anyhow::Result<Switches> {
    load::fixed_calls(client, warmup, in_flight, deadline(warmup, false)).await?;
    let before = switches(pids);
    let seconds = load::fixed_calls(client, n, in_flight, deadline(n, false)).await?;
    let after = switches(pids);
    let (voluntary, nonvoluntary) = (
        after.0.saturating_sub(before.0),
        after.1.saturating_sub(before.1),
    );
    Ok(Switches {
        calls: n,
        voluntary,
        nonvoluntary,
        per_call: (voluntary + nonvoluntary) as f64 / n as f64,
        seconds,
    })
}

/// Whether every thread of every process in `pids` is traced by `tracer`.
fn all_traced(pids: &[i32], tracer: u32) -> bool {
    pids.iter().all(|&pid| {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return true; // gone
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("status"))
                .map(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .and_then(|v| v.trim().parse::<u32>().ok())
                        == Some(tracer)
                })
                .unwrap_or(true)
        })
    })
}

/// System calls per call: `warmup` calls, then `strace -c -f` attached to
/// every thread of `pids`, `n` calls, SIGINT to strace, its table read.
pub(crate) async fn syscalls(
    client: &EchoClient<Channel>,
    pids: &[i32],
    in_flight: usize,
    warmup: u64,
    n: u64,
    dir: &Path,
) -> anyhow::Result<Syscalls> {
    load::fixed_calls(client, warmup, in_flight, deadline(warmup, false)).await?;
    let out = dir.join(format!("strace-c{in_flight}.txt"));
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-U", "name,calls", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(
            dir.join(format!("strace-c{in_flight}.log")),
        )?);
    for pid in pids {
        cmd.arg("-p").arg(pid.to_string());
    }
    let mut strace = cmd.spawn().context("cannot start strace")?;
    let attached_by = Instant::now() + Duration::from_secs(20);
    while !all_traced(pids, strace.id()) {
        if let Some(status) = strace.try_wait()? {
            bail!("strace exited ({status}) before attaching");
        }
        if Instant::now() > attached_by {
            let _ = strace.kill();
            let _ = strace.wait();
            bail!("strace did not attach to every thread within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ran = load::fixed_calls(client, n, in_flight, deadline(n, true)).await;
    kill(Pid::from_raw(strace.id() as i32), Signal::SIGINT)?;
    // strace writes its table on SIGINT and then dies of the signal.
    let status = tokio::task::spawn_blocking(move || strace.wait()).await??;
    ran?;
    use std::os::unix::process::ExitStatusExt;
    if !status.success() && status.signal() != Some(Signal::SIGINT as i32) {
        bail!("strace exited with {status}");
    }
    let table =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let (total, by_name) = parse_strace(&table)?;
    Ok(Syscalls {
        calls: n,
        total,
        per_call: total as f64 / n as f64,
        by_syscall_per_call: by_name
            .into_iter()
            .map(|(name, c)| (name, c as f64 / n as f64))
            .collect(),
    })
}

/// `strace -c -U name,calls` output: the total and calls per syscall.
fn parse_strace(table: &str) -> anyhow::Result<(u64, BTreeMap<String, u64>)> {
    let mut by_name = BTreeMap::new();
    let mut total = None;
    for line in table.lines() {
        let mut t = line.split_whitespace();
        let (Some(name), Some(calls)) = (t.next(), t.next()) else {
            continue;
        };
        let Ok(calls) = calls.parse::<u64>() else {
            continue; // header, rules
        };
        if name == "total" {
            total = Some(calls);
        } else {
            *by_name.entry(name.to_owned()).or_insert(0) += calls;
        }
    }
    let total = total.unwrap_or_else(|| by_name.values().sum());
    if total == 0 {
        bail!("strace counted no system calls:\n{table}");
    }
    Ok((total, by_name))
}

/// `callgrind_control ARG PID` for each pid (blocking).
fn callgrind_control(arg: &str, pids: &[i32]) -> anyhow::Result<()> {
    for pid in pids {
        let out = Command::new("callgrind_control")
            .arg(arg)
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .output()
            .context("cannot run callgrind_control")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || text.contains("Error") {
            bail!("callgrind_control {arg} {pid}: {}", text.trim());
        }
    }
    Ok(())
}

/// The newest dump (`callgrind.<tag>.<pid>.<n>`, largest n) of `pid` in `dir`.
fn newest_dump(dir: &Path, pid: i32) -> anyhow::Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let mut parts = name.rsplitn(3, '.');
        let (Some(n), Some(p), Some(prefix)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !prefix.starts_with("callgrind.") || p != pid.to_string() {
            continue;
        }
        if let Ok(n) = n.parse::<u32>()
            && best.as_ref().is_none_or(|(b, _)| n > *b)
        {
            best = Some((n, entry.path()));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("no callgrind dump of pid {pid} in {}", dir.display()))
}

/// A callgrind dump: its `summary:` (all Ir) and the self Ir of each
/// function (cost lines of `fn=` blocks, without the `calls=` lines'
/// inclusive costs).
#[derive(Debug, Default)]
pub(crate) struct Dump {
    pub(crate) summary: u64,
    pub(crate) self_ir: BTreeMap<String, u64>,
}

pub(crate) fn parse_dump(text: &str) -> Dump {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut d = Dump::default();
    let mut current: Option<String> = None;
    let mut after_calls = false;
    // `fn=(id) name` defines a compressed name, `fn=(id)` reuses one;
    // `cfn=` shares the same table.
    let mut resolve = |spec: &str| -> String {
        let spec = spec.trim();
        if let Some(rest) = spec.strip_prefix('(')
            && let Some((id, name)) = rest.split_once(')')
        {
            let name = name.trim();
            if name.is_empty() {
                return names.get(id).cloned().unwrap_or_else(|| id.to_owned());
            }
            names.insert(id.to_owned(), name.to_owned());
            return name.to_owned();
        }
        spec.to_owned()
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("summary:") {
            d.summary = v.trim().parse().unwrap_or(0);
        } else if let Some(spec) = line.strip_prefix("fn=") {
            current = Some(resolve(spec));
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            resolve(spec);
        } else if line.starts_with("calls=") {
            after_calls = true;
        } else if line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        {
            if after_calls {
                after_calls = false;
                continue;
            }
            let ir = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if let Some(f) = &current {
                *d.self_ir.entry(f.clone()).or_insert(0) += ir;
            }
        }
    }
    d
}

/// A pair running under callgrind: client-side and server-side pids, the
/// directory of their profiles.
pub(crate) struct Profiled<'a> {
    pub(crate) client: &'a [i32],
    pub(crate) server: &'a [i32],
    pub(crate) dir: &'a Path,
    /// Keep the top functions (mtlsd).
    pub(crate) functions: bool,
}

/// Instructions per call: `warmup` calls, `callgrind_control -z` on every
/// process, `n` calls, `callgrind_control -d`, the dumps' summaries.
pub(crate) async fn instructions(
    client: &EchoClient<Channel>,
    pair: &Profiled<'_>,
    in_flight: usize,
    warmup: u64,
    n: u64,
) -> anyhow::Result<Instructions> {
    load::fixed_calls(client, warmup, in_flight, deadline(warmup, true)).await?;
    let all: Vec<i32> = pair.client.iter().chain(pair.server).copied().collect();
    let pids = all.clone();
    tokio::task::spawn_blocking(move || callgrind_control("-z", &pids)).await??;
    load::fixed_calls(client, n, in_flight, deadline(n, true)).await?;
    let pids = all.clone();
    tokio::task::spawn_blocking(move || callgrind_control("-d", &pids)).await??;
    let mut ir = [0u64; 2];
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for (side, pids) in [pair.client, pair.server].into_iter().enumerate() {
        for &pid in pids {
            let path = newest_dump(pair.dir, pid)?;
            let dump = parse_dump(&std::fs::read_to_string(&path)?);
            ir[side] += dump.summary;
            if pair.functions {
                for (f, c) in dump.self_ir {
                    *merged.entry(f).or_insert(0) += c;
                }
            }
        }
    }
    let total = (ir[0] + ir[1]).max(1);
    let mut top: Vec<(String, u64)> = merged.into_iter().collect();
    top.sort_by_key(|e| std::cmp::Reverse(e.1));
    top.truncate(TOP_FUNCTIONS);
    Ok(Instructions {
        calls: n,
        client_ir: ir[0],
        server_ir: ir[1],
        per_call: (ir[0] + ir[1]) as f64 / n as f64,
        top_functions: top
            .into_iter()
            .map(|(name, c)| Function {
                name,
                self_ir_per_call: c as f64 / n as f64,
                share: c as f64 / total as f64,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_is_read_by_name() {
        let table = "syscall              calls    errors\n\
                     ---------------- --------- ---------\n\
                     recvfrom              1200       400\n\
                     sendto                 800          \n\
                     epoll_wait             600          \n\
                     ---------------- --------- ---------\n\
                     total                 2600       400\n";
        let (total, by) = parse_strace(table).expect("parses");
        assert_eq!(total, 2600);
        assert_eq!(by["recvfrom"], 1200);
        assert_eq!(by["epoll_wait"], 600);
        assert_eq!(by.len(), 3);
    }

    #[test]
    fn callgrind_dump_self_costs_skip_inclusive_call_costs() {
        let dump = "events: Ir\nsummary: 100\n\
                    fn=(1) main\n10 5\n+1 5\ncfn=(2) work\ncalls=1 20\n20 70\n\
                    fn=(2)\n20 60\ncfn=(3) leaf\ncalls=2 30\n21 10\n\
                    fn=(3)\n30 10\ntotals: 90\n";
        let d = parse_dump(dump);
        assert_eq!(d.summary, 100);
        assert_eq!(d.self_ir["main"], 10);
        assert_eq!(d.self_ir["work"], 60);
        assert_eq!(d.self_ir["leaf"], 10);
    }
}
