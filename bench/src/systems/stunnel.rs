//! stunnel as a peer: one process per side, L4 only (it has no HTTP/2
//! mode, so no gRPC listener), configured by one file per side.

use std::path::Path;

use super::{Binaries, Launch, Material, Peer, Ports, spawn_peer};
use crate::upstream::UpstreamAddrs;

/// stunnel's settings that matter for the comparison, for the report.
pub(super) const SETTINGS: &[&str] = &[
    "stunnel 5.68, one thread per connection (its only model; no worker setting)",
    "sslVersionMin TLSv1.3, verifyChain + requireCert (server), verifyChain + checkHost (client)",
    "TCP_NODELAY on both sockets, debug = 3 (errors only)",
    "full handshakes: sessionResume = no on the client side (the server side, with options = NO_TICKET, still resumes from its session cache when offered one); echo-resume keeps the defaults",
    "L4 only",
];

/// Starts the server side on `server`'s ports, then the client side on
/// `client`'s; returns (client, server).
pub(super) fn start(
    bins: &Binaries,
    dir: &Path,
    m: &Material,
    up: &UpstreamAddrs,
    server: &Ports,
    client: &Ports,
    launch: &Launch,
) -> anyhow::Result<(Peer, Peer)> {
    let server_side = spawn(
        bins,
        dir,
        "server",
        &server_config(m, dir, server, up),
        server,
        launch,
    )?;
    let client_side = spawn(
        bins,
        dir,
        "client",
        &client_config(m, dir, client, server),
        client,
        launch,
    )?;
    Ok((client_side, server_side))
}

/// The global section: foreground, errors only, TCP_NODELAY both ways.
fn global(dir: &Path, side: &str) -> String {
    format!(
        "foreground = yes
pid =
debug = 3
output = {dir}/stunnel-{side}.out
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
",
        dir = dir.display()
    )
}

/// The server side: one service per L4 listener, mTLS in, plaintext to
/// the upstream.
fn server_config(m: &Material, dir: &Path, p: &Ports, up: &UpstreamAddrs) -> String {
    let mut c = global(dir, "server");
    for (name, port, upstream, resume) in [
        ("tcp-grpc", p.tcp_grpc, up.grpc, false),
        ("echo", p.echo, up.echo, false),
        ("echo-resume", p.echo_resume, up.echo, true),
        ("sink", p.sink, up.sink, false),
    ] {
        let r = if resume { "" } else { "options = NO_TICKET\n" };
        c.push_str(&format!(
            "[{name}]
accept = 127.0.0.1:{port}
connect = {upstream}
cert = {crt}
key = {key}
CAfile = {ca}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
{r}",
            crt = m.server[0].display(),
            key = m.server[1].display(),
            ca = m.ca_pem.display(),
        ));
    }
    c
}

/// The client side: one `client = yes` service per L4 listener, to the
/// server side's service of the same name.
fn client_config(m: &Material, dir: &Path, p: &Ports, s: &Ports) -> String {
    let mut c = global(dir, "client");
    for (name, port, server, resume) in [
        ("tcp-grpc", p.tcp_grpc, s.tcp_grpc, false),
        ("echo", p.echo, s.echo, false),
        ("echo-resume", p.echo_resume, s.echo_resume, true),
        ("sink", p.sink, s.sink, false),
    ] {
        let r = if resume { "yes" } else { "no" };
        c.push_str(&format!(
            "[{name}]
client = yes
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{server}
cert = {crt}
key = {key}
CAfile = {ca}
verifyChain = yes
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.3
sessionResume = {r}
",
            crt = m.client[0].display(),
            key = m.client[1].display(),
            ca = m.ca_pem.display(),
        ));
    }
    c
}

/// Writes one side's config to `<dir>/stunnel-<side>.conf` and starts
/// stunnel on it (L4 listeners only: no gRPC port to wait for).
fn spawn(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
    launch: &Launch,
) -> anyhow::Result<Peer> {
    let path = dir.join(format!("stunnel-{side}.conf"));
    std::fs::write(&path, config)?;
    let mut cmd = launch.command(&bins.stunnel, &format!("stunnel-{side}"));
    cmd.arg(&path);
    spawn_peer(
        &format!("stunnel ({side})"),
        cmd,
        &dir.join(format!("stunnel-{side}.log")),
        &p.all(false),
        launch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::testing::{DIR, assert_pinned, material, ports, upstream};

    #[test]
    fn configs_match_the_pinned_renders() {
        let m = material();
        let dir = Path::new(DIR);
        let (server, client) = (ports(21000), ports(22000));
        assert_pinned(
            "stunnel-server.conf",
            &server_config(&m, dir, &server, &upstream()),
        );
        assert_pinned(
            "stunnel-client.conf",
            &client_config(&m, dir, &client, &server),
        );
    }
}
