//! `mtlsd dev`: a self-contained development mode.
//!
//! Mints a dev CA (kept across runs unless `--fresh`), a host certificate
//! for localhost/127.0.0.1/::1/this host name and a client certificate,
//! writes a role inventory naming both (so listeners check roles and
//! `mtlsd status` shows peers by host), a config with an inbound and an
//! outbound tcp listener in front of a small echo server, and runs it
//! through the same code path as `mtlsd run`. The commands it prints name
//! this binary by its path, so they work as printed after `cargo run`.
//! Nothing here is for production: the CA key sits next to the
//! certificates.

use std::fmt::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use mtlsd_devca::{CertificateAuthority, LeafSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::out::outln;
use crate::config::Config;

pub(super) async fn dev(
    state_dir: Option<PathBuf>,
    port_base: u16,
    fresh: bool,
) -> anyhow::Result<ExitCode> {
    let dir = state_dir.unwrap_or_else(|| std::env::temp_dir().join("mtlsd-dev"));
    let ports = Ports::from_base(port_base)?;
    if fresh && dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;

    let files = mint(&dir)?;
    write_public(&files.inventory, &inventory_text(&files))?;
    let config_path = dir.join("mtlsd.toml");
    write_private(&config_path, &config_text(&dir, &ports))?;
    let config = Config::load(&config_path).context("generated dev config is invalid")?;

    let echo = TcpListener::bind(("127.0.0.1", ports.echo))
        .await
        .with_context(|| format!("cannot start the echo upstream on 127.0.0.1:{}", ports.echo))?;
    tokio::spawn(echo_server(echo));

    // The path this binary runs from, so the printed commands work without
    // mtlsd on PATH (after `cargo run`, it is under target/).
    let exe = std::env::current_exe()
        .map(|path| path.display().to_string())
        .unwrap_or_else(|_| "mtlsd".to_owned());
    let banner = banner(&exe, &dir, &ports, &files);
    super::run::serve(&config, move || outln!("{banner}")).await
}

struct Ports {
    echo: u16,
    inbound: u16,
    outbound: u16,
    admin: u16,
}

impl Ports {
    fn from_base(base: u16) -> anyhow::Result<Self> {
        let at = |offset: u16| {
            base.checked_add(offset)
                .with_context(|| format!("--port-base {base} is too high (needs base+{offset})"))
        };
        Ok(Self {
            echo: base,
            inbound: at(443)?,
            outbound: at(80)?,
            admin: at(90)?,
        })
    }
}

struct DevFiles {
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    inventory: PathBuf,
    /// The SANs of the host certificate, as the inventory writes them.
    host_sans: Vec<String>,
}

/// The dev host's name in the inventory (`identity.host`), and the
/// dev client's.
const DEV_HOST: &str = "dev-host";
const DEV_CLIENT: &str = "dev-client";
const DEV_CLIENT_SAN: &str = "dev-client.localhost";
/// The host certificate's fixed SANs, which the inventory lists for
/// DEV_HOST. The certificate also names this machine's host name, which
/// the inventory leaves out: one SAN is enough to identify the host, and
/// whatever a host name looks like cannot then make the inventory invalid.
const DEV_HOST_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn mint(dir: &Path) -> anyhow::Result<DevFiles> {
    let ca_cert = dir.join("ca.crt");
    let ca_key = dir.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = std::fs::read_to_string(&ca_cert)?;
        let key = std::fs::read_to_string(&ca_key)?;
        CertificateAuthority::from_pem(&cert, &key).with_context(|| {
            format!("cannot reuse the dev CA in {} (try --fresh)", dir.display())
        })?
    } else {
        let ca = CertificateAuthority::new("mtlsd dev CA")?;
        write_public(&ca_cert, ca.cert_pem())?;
        write_private(&ca_key, ca.key_pem())?;
        ca
    };

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let mut sans = DEV_HOST_SANS.to_vec();
    if !hostname.is_empty() && hostname != "localhost" {
        sans.push(&hostname);
    }
    let host = ca.issue(&LeafSpec::new("mtlsd dev host", &sans))?;
    write_public(&dir.join("host.crt"), &host.cert_pem)?;
    write_private(&dir.join("host.key"), &host.key_pem)?;

    let client = ca.issue(&LeafSpec::new("mtlsd dev client", &[DEV_CLIENT_SAN]))?;
    let files = DevFiles {
        ca: ca_cert,
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        inventory: dir.join("inventory.toml"),
        host_sans: DEV_HOST_SANS.iter().map(|san| inventory_san(san)).collect(),
    };
    write_public(&files.client_cert, &client.cert_pem)?;
    write_private(&files.client_key, &client.key_pem)?;
    Ok(files)
}

/// `DNS:name` or `IP:addr`, as the inventory names a SAN.
fn inventory_san(san: &str) -> String {
    if san.parse::<std::net::IpAddr>().is_ok() {
        format!("IP:{san}")
    } else {
        format!("DNS:{san}")
    }
}

/// Two hosts: this one, which serves the echo daemon and dials it, and the
/// client certificate's, which may only call it.
fn inventory_text(files: &DevFiles) -> String {
    let quoted = |sans: &[String]| {
        sans.iter()
            .map(|san| format!("{san:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"# Written by `mtlsd dev`; regenerated on every run.
cluster = "dev"

[hosts.{DEV_HOST}]
sans = [{host_sans}]
roles = ["echo-server", "echo-client"]

[hosts.{DEV_CLIENT}]
sans = [{client_sans}]
roles = ["echo-client"]
"#,
        host_sans = quoted(&files.host_sans),
        client_sans = quoted(&[inventory_san(DEV_CLIENT_SAN)]),
    )
}

fn config_text(dir: &Path, ports: &Ports) -> String {
    let d = dir.display();
    let sock = dir.join(crate::config::ADMIN_SOCKET_NAME);
    // A state directory too deep for a unix socket address: TCP only.
    let socket = if sock.as_os_str().len() <= crate::config::MAX_SOCKET_PATH {
        format!(
            "# The local control socket `mtlsd status --config` uses.\nsocket = \"{}\"",
            sock.display()
        )
    } else {
        "# No control socket: the state directory's path is too long for one.".to_owned()
    };
    format!(
        r#"# Written by `mtlsd dev`; regenerated on every run.
state_dir = "{d}"

[admin]
listen = "127.0.0.1:{admin}"
{socket}

[inventory]
path = "{d}/inventory.toml"

[identity]
host = "{DEV_HOST}"
cert = "{d}/host.crt"
key = "{d}/host.key"
trust_domain = "mesh"

[trust_domains.mesh]
bundle = "{d}/ca.crt"
version = "dev"

# Remote hosts reach the local echo daemon through this mTLS listener;
# only inventory hosts with the role echo-client get through.
[[inbound]]
name = "echo-in"
listen = "127.0.0.1:{inbound}"
upstream = "127.0.0.1:{echo}"
allow_roles = ["echo-client"]

# Local clients dial this in plaintext; mtlsd carries it over mTLS to a
# server that must be an inventory host with the role echo-server.
[[outbound]]
name = "echo-out"
listen = "127.0.0.1:{outbound}"
upstream = "127.0.0.1:{inbound}"
server_name = "localhost"
expect_roles = ["echo-server"]
"#,
        inbound = ports.inbound,
        outbound = ports.outbound,
        echo = ports.echo,
        admin = ports.admin,
    )
}

fn banner(exe: &str, dir: &Path, ports: &Ports, files: &DevFiles) -> String {
    let exe = shell_word(exe);
    let d = dir.display();
    let path = |path: &Path| shell_word(&path.display().to_string());
    let (ca, config) = (path(&files.ca), path(&dir.join("mtlsd.toml")));
    let admin = format!("127.0.0.1:{}", ports.admin);
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nmtlsd dev is running. State, certificates, inventory and config: {d}\n"
    );
    let _ = writeln!(
        text,
        "  plaintext 127.0.0.1:{} --(outbound)--> mTLS 127.0.0.1:{} --(inbound)--> echo 127.0.0.1:{}",
        ports.outbound, ports.inbound, ports.echo
    );
    let _ = writeln!(
        text,
        "  inventory: {DEV_HOST} (this host: echo-server, echo-client), {DEV_CLIENT} (echo-client)\n"
    );
    let _ = writeln!(text, "Try it:");
    let _ = writeln!(
        text,
        "  # through the pair, answered by the echo daemon:\n  \
         exec 3<>/dev/tcp/127.0.0.1/{}; echo hello >&3; head -1 <&3; exec 3<&-",
        ports.outbound
    );
    let _ = writeln!(
        text,
        "  # straight to the mTLS listener with the dev client certificate:\n  \
         openssl s_client -quiet -connect 127.0.0.1:{} -CAfile {ca} -cert {} -key {}",
        ports.inbound,
        path(&files.client_cert),
        path(&files.client_key)
    );
    let _ = writeln!(
        text,
        "  # without a client certificate it is refused (see the log line):\n  \
         openssl s_client -quiet -connect 127.0.0.1:{} -CAfile {ca}",
        ports.inbound,
    );
    let _ = writeln!(
        text,
        "  # what the certificates hold, and the config check:\n  \
         {exe} inspect {} {} --bundle {ca}\n  \
         {exe} check --config {config}",
        path(&dir.join("host.crt")),
        path(&dir.join("host.key")),
    );
    let _ = writeln!(
        text,
        "  # what the daemon serves, the peers it has seen, and its metrics:\n  \
         {exe} status --config {config}\n  \
         curl -s http://{admin}/metrics"
    );
    let _ = writeln!(text, "\nCtrl-C drains and stops.");
    text
}

/// `word` as one shell word: as is when it needs no quoting, else in
/// single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The demo upstream: echoes each connection's bytes back, honouring
/// half-close.
async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let mut buf = [0u8; 8192];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = write.shutdown().await;
        });
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_with_mode(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode of {}", path.display()))?;
    Ok(())
}
