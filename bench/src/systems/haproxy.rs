//! HAProxy as a peer: one process per side, `mode http` for the gRPC
//! listener and `mode tcp` for the others, configured by one file per
//! side.

use std::path::Path;

use super::{Binaries, Launch, Material, Peer, Ports, spawn_peer};
use crate::upstream::UpstreamAddrs;

/// HAProxy's settings that matter for the comparison, for the report.
pub(super) const SETTINGS: &[&str] = &[
    "nbthread 2 (one per core, as the docs advise), maxconn 8192 (the FD hard limit here is 20000), logging off",
    "ssl-default-bind/server-options ssl-min-ver TLSv1.3; tune.ssl.cachesize 0",
    "L7: mode http, client side `bind … proto h2` (h2c), `server … ssl alpn h2`, server side `bind … ssl alpn h2`, `server … proto h2` to the upstream; http-reuse safe (default)",
    "L4: mode tcp",
    "full handshakes: `no-tls-tickets` on binds, `no-ssl-reuse` on servers; echo-resume keeps tickets and reuse (defaults)",
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
        &server_config(m, server, up),
        server,
        launch,
    )?;
    let client_side = spawn(
        bins,
        dir,
        "client",
        &client_config(m, client, server),
        client,
        launch,
    )?;
    Ok((client_side, server_side))
}

/// Process-wide settings and timeouts, the same on both sides.
const GLOBAL: &str = "global
    nbthread 2
    maxconn 8192
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
    ssl-server-verify required

defaults
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    timeout tunnel 5m
";

/// The server side: mTLS in (`alpn h2` for gRPC), plaintext to the
/// upstream (`proto h2` for gRPC).
fn server_config(m: &Material, p: &Ports, up: &UpstreamAddrs) -> String {
    let crt = m.server[2].display();
    let ca = m.ca_pem.display();
    let ssl = format!("ssl crt {crt} ca-file {ca} verify required");
    let mut c = String::from(GLOBAL);
    c.push_str(&format!(
        "
frontend grpc
    mode http
    bind 127.0.0.1:{grpc} {ssl} alpn h2 no-tls-tickets
    default_backend grpc
backend grpc
    mode http
    server up {upg} proto h2
",
        grpc = p.grpc,
        upg = up.grpc,
    ));
    for (name, port, upstream, tickets) in [
        ("tcp-grpc", p.tcp_grpc, up.grpc, false),
        ("echo", p.echo, up.echo, false),
        ("echo-resume", p.echo_resume, up.echo, true),
        ("sink", p.sink, up.sink, false),
    ] {
        let t = if tickets { "" } else { " no-tls-tickets" };
        c.push_str(&format!(
            "
frontend {name}
    mode tcp
    bind 127.0.0.1:{port} {ssl}{t}
    default_backend {name}
backend {name}
    mode tcp
    server up {upstream}
"
        ));
    }
    c
}

/// The client side: plaintext in (`proto h2` for gRPC), mTLS to the
/// server side's listener of the same name.
fn client_config(m: &Material, p: &Ports, s: &Ports) -> String {
    let crt = m.client[2].display();
    let ca = m.ca_pem.display();
    let ssl = format!(
        "ssl crt {crt} ca-file {ca} verify required verifyhost localhost sni str(localhost)"
    );
    let mut c = String::from(GLOBAL);
    c.push_str(&format!(
        "
frontend grpc
    mode http
    bind 127.0.0.1:{grpc} proto h2
    default_backend grpc
backend grpc
    mode http
    server s 127.0.0.1:{sgrpc} {ssl} alpn h2 no-ssl-reuse
",
        grpc = p.grpc,
        sgrpc = s.grpc,
    ));
    for (name, port, server, reuse) in [
        ("tcp-grpc", p.tcp_grpc, s.tcp_grpc, false),
        ("echo", p.echo, s.echo, false),
        ("echo-resume", p.echo_resume, s.echo_resume, true),
        ("sink", p.sink, s.sink, false),
    ] {
        let r = if reuse { "" } else { " no-ssl-reuse" };
        c.push_str(&format!(
            "
frontend {name}
    mode tcp
    bind 127.0.0.1:{port}
    default_backend {name}
backend {name}
    mode tcp
    server s 127.0.0.1:{server} {ssl}{r}
"
        ));
    }
    c
}

/// Writes one side's config to `<dir>/haproxy-<side>.cfg` and starts
/// HAProxy in the foreground on it.
fn spawn(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
    launch: &Launch,
) -> anyhow::Result<Peer> {
    let path = dir.join(format!("haproxy-{side}.cfg"));
    std::fs::write(&path, config)?;
    let mut cmd = launch.command(&bins.haproxy, &format!("haproxy-{side}"));
    cmd.arg("-db").arg("-f").arg(&path);
    spawn_peer(
        &format!("haproxy ({side})"),
        cmd,
        &dir.join(format!("haproxy-{side}.log")),
        &p.all(true),
        launch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::testing::{assert_pinned, material, ports, upstream};

    #[test]
    fn configs_match_the_pinned_renders() {
        let m = material();
        let (server, client) = (ports(21000), ports(22000));
        assert_pinned(
            "haproxy-server.cfg",
            &server_config(&m, &server, &upstream()),
        );
        assert_pinned("haproxy-client.cfg", &client_config(&m, &client, &server));
    }
}
