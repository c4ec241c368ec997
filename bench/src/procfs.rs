//! What /proc says about a proxy: its processes, CPU time and resident
//! memory. A proxy instance is its root process and every descendant
//! (nginx's workers); threads are counted by their process.

use std::collections::HashMap;

/// Linux reports utime/stime in USER_HZ, which is 100 on every platform
/// Rust targets (the kernel ABI fixes it; `getconf CLK_TCK` says 100).
const TICKS_PER_SECOND: f64 = 100.0;

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// `root` and all its live descendants.
pub(crate) fn tree(root: i32) -> Vec<i32> {
    let mut parent_of: HashMap<i32, i32> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Field 4 of stat is the parent (index 1 after the name).
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
                parent_of.insert(pid, ppid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|&(_, &pp)| pp == p)
                .map(|(&c, _)| c),
        );
        i += 1;
    }
    out
}

/// User plus system CPU seconds used so far by `pids` (exited threads
/// included, as the kernel folds them into their process).
pub(crate) fn cpu_seconds(pids: &[i32]) -> f64 {
    let (user, system) = cpu_split(pids);
    user + system
}

/// User and system CPU seconds used so far by `pids`, apart: where a
/// proxy spends its time per call (its own code, or the kernel's sockets).
pub(crate) fn cpu_split(pids: &[i32]) -> (f64, f64) {
    pids.iter()
        .filter_map(|&pid| {
            let f = stat_fields(pid)?;
            // utime and stime are fields 14 and 15 (index 11 and 12 here).
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some((utime as f64, stime as f64))
        })
        .fold((0.0, 0.0), |(u, s), (du, ds)| {
            (u + du / TICKS_PER_SECOND, s + ds / TICKS_PER_SECOND)
        })
}

/// A `kB` field of /proc/<pid>/status, summed over `pids`.
fn status_kib(pids: &[i32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|&pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = text.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// VmRSS in KiB, summed over `pids`.
pub(crate) fn rss_kib(pids: &[i32]) -> u64 {
    status_kib(pids, "VmRSS:")
}

/// RssAnon in KiB (heap and stacks, without the shared binary), summed.
pub(crate) fn rss_anon_kib(pids: &[i32]) -> u64 {
    status_kib(pids, "RssAnon:")
}

/// The CPUs `/proc/stat` counts in its first line (one `cpuN` line
/// each): the capacity against which [`machine_busy_seconds`] is read.
pub(crate) fn cores() -> usize {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

/// Busy CPU seconds of the whole machine so far (all cores: user, nice,
/// system, irq, softirq, steal from the first line of /proc/stat).
pub(crate) fn machine_busy_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy as f64 / TICKS_PER_SECOND
}
