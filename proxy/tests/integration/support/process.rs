//! Driving the real `mtlsd` binary: spawn, read its JSON logs, signal it.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running `mtlsd` with its stderr (JSON log lines) and stdout collected.
pub struct MtlsdProcess {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: mpsc::Receiver<String>,
    pub stderr_seen: Vec<String>,
    pub stdout_seen: Vec<String>,
}

/// Runs `mtlsd ARGS` to completion with a time limit; returns the exit
/// status, stdout and stderr.
pub fn run_to_end(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    finish(MtlsdProcess::spawn(args, &[]), limit)
}

/// [`run_to_end`] as `uid` (see [`MtlsdProcess::spawn_as`]; `None`: as
/// this process) with `env` added.
pub fn run_as_to_end(
    uid: Option<u32>,
    args: &[&str],
    env: &[(&str, &Path)],
    limit: Duration,
) -> (ExitStatus, String, String) {
    finish(
        match uid {
            Some(uid) => MtlsdProcess::spawn_as(uid, args, env),
            None => MtlsdProcess::spawn(args, env),
        },
        limit,
    )
}

fn finish(mut process: MtlsdProcess, limit: Duration) -> (ExitStatus, String, String) {
    let status = process.wait_exit(limit);
    process.drain();
    (
        status,
        process.stdout_seen.join("\n"),
        process.stderr_seen.join("\n"),
    )
}

impl MtlsdProcess {
    pub fn spawn(args: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::spawn_command(Command::new(env!("CARGO_BIN_EXE_mtlsd")), args, env)
    }

    /// Like [`Self::spawn`], as user and group `uid` without supplementary
    /// groups (`setpriv`, which execs mtlsd: the pid is mtlsd's).
    pub fn spawn_as(uid: u32, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_mtlsd"));
        Self::spawn_command(command, args, env)
    }

    fn spawn_command(mut command: Command, args: &[&str], env: &[(&str, &Path)]) -> Self {
        command
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("NOTIFY_SOCKET")
            // A control socket only where a test configures one.
            .env_remove("RUNTIME_DIRECTORY")
            .env("MTLSD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn mtlsd");
        let stderr = lines(child.stderr.take().expect("stderr piped"));
        let stdout = lines(child.stdout.take().expect("stdout piped"));
        Self {
            child,
            stderr,
            stdout,
            stderr_seen: Vec::new(),
            stdout_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"))
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal mtlsd");
    }

    /// Waits for a stderr JSON log line whose `message` is `message` and
    /// returns it parsed.
    pub async fn wait_for_log(&mut self, message: &str, limit: Duration) -> serde_json::Value {
        self.wait_for_log_where(message, |_| true, limit).await
    }

    pub async fn wait_for_log_where(
        &mut self,
        message: &str,
        filter: impl Fn(&serde_json::Value) -> bool,
        limit: Duration,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Ok(line) = self.stderr.try_recv() {
                self.stderr_seen.push(line.clone());
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == message
                    && filter(&value)
                {
                    return value;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no log line {message:?} within {limit:?}; stderr so far:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Like [`Self::wait_for_log_where`], but a matching line consumed
    /// earlier by another wait counts too: for start-up lines whose order
    /// is not fixed. Like it, consumes new lines only up to the match.
    pub async fn find_log_where(
        &mut self,
        message: &str,
        filter: impl Fn(&serde_json::Value) -> bool,
        limit: Duration,
    ) -> serde_json::Value {
        let earlier = self.stderr_seen.iter().find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(|value| value["message"] == message && filter(value))
        });
        match earlier {
            Some(value) => value,
            None => self.wait_for_log_where(message, filter, limit).await,
        }
    }

    /// The admin endpoint's address, from its start-up log line.
    pub async fn admin_addr(&mut self) -> std::net::SocketAddr {
        let line = self
            .find_log_where("admin endpoint listening", |_| true, super::SOON)
            .await;
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {line}"))
    }

    /// Waits for a stdout line containing `needle`.
    pub async fn wait_for_stdout(&mut self, needle: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Ok(line) = self.stdout.try_recv() {
                self.stdout_seen.push(line.clone());
                if line.contains(needle) {
                    return;
                }
            }
            self.drain_stderr();
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "no stdout line with {needle:?} within {limit:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bound address of listener `name`, from its "listening" log line.
    pub async fn listener_addr(&mut self, name: &str) -> std::net::SocketAddr {
        let line = self
            .find_log_where("listening", |v| v["listener"] == name, super::SOON)
            .await;
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {line}"))
    }

    /// Blocks (politely) until exit, or kills and panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                self.drain();
                panic!(
                    "mtlsd did not exit within {limit:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async wrapper of [`Self::wait_exit`] for use inside tokio tests.
    pub async fn exited(&mut self, limit: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mtlsd did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Collects everything printed so far.
    pub fn drain(&mut self) {
        // Give the reader threads a moment to hit EOF after exit.
        std::thread::sleep(Duration::from_millis(50));
        self.drain_stderr();
        while let Ok(line) = self.stdout.try_recv() {
            self.stdout_seen.push(line);
        }
    }

    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.stderr_seen.push(line);
        }
    }
}

impl Drop for MtlsdProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
