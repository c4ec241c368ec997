//! The `mtlsd` command line: one module per verb.

mod admin_client;
mod check;
mod dev;
mod inspect;
pub mod out;
mod reload;
mod rotation;
mod run;
pub mod status;
mod trust;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, KeySource};

/// Per-host mTLS sidecar: terminates and originates mutual TLS for the
/// plaintext daemons on this host.
#[derive(Debug, Parser)]
#[command(name = "mtlsd", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "MTLSD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// What the command needs before the runtime exists. `run` reads its
    /// configuration here, once: `runtime.worker_threads` sizes the runtime,
    /// and the same parse is what it then runs with (or reports).
    pub fn prepare(&self) -> Prepared {
        Prepared {
            run_config: match &self.command {
                Command::Run { config } => Some(Config::load(config)),
                _ => None,
            },
        }
    }
}

/// See [`Cli::prepare`].
#[derive(Debug)]
pub struct Prepared {
    run_config: Option<Result<Config, ConfigError>>,
}

impl Prepared {
    /// Runtime worker threads: the config's for `run` (the default when it
    /// does not load; `run` then reports why), one for every other command.
    pub fn worker_threads(&self) -> usize {
        match &self.run_config {
            Some(Ok(config)) => config.worker_threads,
            _ => 1,
        }
    }

    /// Whether the command runs on tokio's single-threaded scheduler: one
    /// worker, and no identity key in a PKCS#11 token. A handshake waits
    /// for the token's signature synchronously (rustls signs inside the
    /// handshake); on the multi-thread scheduler that wait hands the
    /// thread's other connections to a fresh worker, on the single one it
    /// would hold them all.
    pub fn single_threaded(&self) -> bool {
        match &self.run_config {
            Some(Ok(config)) => {
                config.worker_threads == 1 && !matches!(config.identity.key, KeySource::Token(_))
            }
            _ => true,
        }
    }
}

pub use crate::logging::LogFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (SIGHUP reloads TLS material, SIGTERM drains and exits).
    Run {
        /// Configuration file.
        #[arg(long, short, env = "MTLSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show what a running daemon serves: material per trust domain,
    /// last reload, listeners and their counters, peers seen. Exit 3 when
    /// no daemon answers.
    Status {
        /// TCP admin address of the daemon; skips the control socket
        /// (default: admin.socket, then admin.listen from the config).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Configuration file, read only to find the daemon (control socket
        /// and admin address).
        #[arg(long, short, env = "MTLSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print the JSON the daemon sends instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and all TLS material exactly as start-up
    /// would; print every problem; exit 1 if there is any. With --compare,
    /// also say what a reload would change and exit 4 when something needs
    /// a restart.
    Check {
        /// Configuration file.
        #[arg(long, short, env = "MTLSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Treat warnings (e.g. a rule naming a role no inventory host
        /// holds) as problems: exit 1.
        #[arg(long)]
        strict: bool,
        /// The configuration the daemon runs with: print each difference
        /// (material and settings) as `live: ITEM` or `restart: ITEM: WHY`,
        /// exactly as a reload would classify it; exit 4 when any needs a
        /// restart.
        #[arg(long, value_name = "RUNNING_CONFIG")]
        compare: Option<PathBuf>,
        /// Also check what only binding shows: every listen address
        /// (listeners and admin) is on this host.
        #[arg(long)]
        bind: bool,
    },
    /// Ask the running daemon to reload now and wait for the outcome: exit 0
    /// when applied or unchanged, 1 when rejected (the reason is printed),
    /// 3 when no daemon answers, 4 when a changed setting needs a restart
    /// (the rest was applied). Used by systemd's ExecReload.
    Reload {
        /// TCP admin address of the daemon; skips the control socket
        /// (default: admin.socket, then admin.listen from the config).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Configuration file, read only to find the daemon (control socket
        /// and admin address).
        #[arg(long, short, env = "MTLSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// CA rotation readiness of this host, from the running daemon.
    Rotation {
        #[command(subcommand)]
        command: RotationCommand,
    },
    /// Trust bundles: fetch one from a running host to join the mesh.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Show what PEM files hold and whether their certificates chain to a
    /// bundle.
    Inspect {
        /// PEM files: certificates, chains, bundles or private keys.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Check each leaf certificate against this CA bundle (repeatable).
        #[arg(long, short)]
        bundle: Vec<PathBuf>,
    },
    /// Development mode: mint a dev CA and certificates, write a config with
    /// a demo inbound/outbound pair and an echo upstream, and run it.
    Dev {
        /// Where certificates and the generated config go.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// First port of the block the demo uses (echo = base, inbound =
        /// base+443, outbound = base+80, admin = base+90).
        #[arg(long, default_value_t = 17000)]
        port_base: u16,
        /// Throw away the existing dev CA and start over.
        #[arg(long)]
        fresh: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Is this phase of a CA rotation done on this host? add-ca: the new CA
    /// is in the bundle. reissue: this host's certificate no longer needs
    /// the old CA. remove-ca: neither this host nor any peer it talks to
    /// needs the old CA. Exit 0 done, 4 blocked (each blocker listed), 5
    /// only hosts not seen recently stand in the way, 3 no daemon answered.
    Check {
        /// The rotation phase.
        #[arg(long, value_enum)]
        phase: crate::rotation_report::Phase,
        /// The CA's SHA-256 (`mtlsd status` prints it per CA; colons
        /// allowed) or a unique prefix of 8+ hex digits: the new CA for
        /// add-ca, the old one for reissue and remove-ca.
        #[arg(long)]
        ca: String,
        /// The trust domain (default: the one whose bundle holds the CA, or
        /// this host's own).
        #[arg(long)]
        trust_domain: Option<String>,
        /// Accept inventory hosts this host should talk to but has not seen
        /// within peers.stale_after (e.g. a host that is being retired).
        #[arg(long)]
        allow_unknown: bool,
        /// Print the daemon's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        /// TCP admin address of the daemon; skips the control socket
        /// (default: admin.socket, then admin.listen from the config).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Configuration file, read only to find the daemon (control socket
        /// and admin address).
        #[arg(long, short, env = "MTLSD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Fetch a trust bundle from a host's bootstrap endpoint ([bootstrap]
    /// listen) and write it only if its CAs' SHA-256 fingerprints are
    /// exactly the ones given (one --sha256 per CA; two mid-rotation). The
    /// connection cannot be verified yet: the fingerprints, obtained out of
    /// band, decide. Without --sha256, print each CA's fingerprint and
    /// subject and write nothing (exit 2). Exit 0 written, 1 refused or
    /// failed (nothing written).
    Fetch {
        /// The bootstrap endpoint of a host that runs mtlsd.
        #[arg(long, value_name = "HOST:PORT")]
        from: String,
        /// The trust domain whose bundle to fetch (e.g. mesh).
        #[arg(long, value_name = "NAME")]
        domain: String,
        /// The SHA-256 of a CA the bundle must hold, over its DER (what
        /// `openssl x509 -outform DER | sha256sum` and `mtlsd inspect`
        /// print; colons allowed). Repeat once per CA.
        #[arg(long, value_name = "HEX", requires = "out")]
        sha256: Vec<String>,
        /// Where to write the bundle (mode 0644, replaced atomically).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Give up after this long (connect, handshake and download).
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Runs the chosen command.
pub async fn dispatch(cli: Cli, prepared: Prepared) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let loaded = prepared.run_config.unwrap_or_else(|| Config::load(&config));
            run::run(loaded).await
        }
        Command::Check {
            config,
            strict,
            compare,
            bind,
        } => check::check(
            &config,
            &check::Options {
                strict,
                compare,
                bind,
            },
        ),
        Command::Reload { admin, config } => reload::reload(admin, &config).await,
        Command::Status {
            admin,
            config,
            json,
        } => status::status(admin, &config, json).await,
        Command::Rotation {
            command:
                RotationCommand::Check {
                    phase,
                    ca,
                    trust_domain,
                    allow_unknown,
                    json,
                    admin,
                    config,
                },
        } => {
            let question = rotation::Question {
                phase,
                ca: &ca,
                trust_domain: trust_domain.as_deref(),
                allow_unknown,
                json,
            };
            rotation::check(admin, &config, &question).await
        }
        Command::Trust {
            command:
                TrustCommand::Fetch {
                    from,
                    domain,
                    sha256,
                    out,
                    timeout,
                },
        } => {
            trust::fetch(&trust::Fetch {
                from,
                domain,
                sha256,
                out,
                timeout,
            })
            .await
        }
        Command::Inspect { files, bundle } => inspect::inspect(&files, &bundle),
        Command::Dev {
            state_dir,
            port_base,
            fresh,
        } => dev::dev(state_dir, port_base, fresh).await,
    }
}
