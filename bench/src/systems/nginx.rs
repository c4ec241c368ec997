//! nginx as a peer: one master with its workers per side, the `http`
//! module (gRPC) for the gRPC listener and the `stream` module for the
//! others, configured by one file per side.

use std::path::Path;

use super::{Binaries, Launch, Material, Peer, Ports, spawn_peer};
use crate::upstream::UpstreamAddrs;

/// nginx's settings that matter for the comparison, for the report.
pub(super) const SETTINGS: &[&str] = &[
    "worker_processes 2 (auto = cores), worker_connections 16384, worker_rlimit_nofile 65536, access_log off",
    "ssl_protocols TLSv1.3; ssl_session_cache off, ssl_session_tickets off, *_ssl_session_reuse off (echo-resume: tickets and reuse on)",
    "L7: `listen … http2` (h2c) → `grpc_pass grpcs://` with upstream keepalive 64 → `listen … ssl http2` → `grpc_pass grpc://` with keepalive 64; keepalive_requests 1000000",
    "under callgrind (instruction counts only): `master_process off` (one process running the worker loop), as valgrind cannot be driven in forked workers",
    "L4: stream module, proxy_ssl on the client side, `listen … ssl` on the server side, proxy_half_close on (so a half-close reaches the far end, as the other systems do)",
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

/// The main context: the stream module, workers, pid and error log.
fn main_context(dir: &Path, side: &str) -> String {
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    format!(
        "load_module {module};
worker_processes 2;
worker_rlimit_nofile 65536;
pid {dir}/nginx-{side}.pid;
error_log {dir}/nginx-{side}.error.log error;
events {{ worker_connections 16384; }}
",
        dir = dir.display()
    )
}

/// What both sides' `http` blocks share: no access log, temp paths in
/// `dir`, long keepalive, TLS 1.3.
fn http_common(dir: &Path, side: &str) -> String {
    let t = dir.join(format!("nginx-{side}-tmp"));
    let t = t.display();
    format!(
        "    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    ssl_protocols TLSv1.3;
"
    )
}

/// The server side: `listen … ssl http2` → `grpc_pass grpc://` for gRPC,
/// stream `listen … ssl` → `proxy_pass` for the others.
fn server_config(m: &Material, dir: &Path, p: &Ports, up: &UpstreamAddrs) -> String {
    let (crt, key, ca) = (
        m.server[0].display(),
        m.server[1].display(),
        m.ca_pem.display(),
    );
    let tls = format!(
        "ssl_certificate {crt}; ssl_certificate_key {key};
        ssl_client_certificate {ca}; ssl_verify_client on;"
    );
    let mut c = main_context(dir, "server");
    c.push_str(&format!(
        "http {{
{common}
    upstream grpc_up {{ server {upg}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
    server {{
        listen 127.0.0.1:{grpc} ssl http2;
        {tls}
        ssl_session_cache off; ssl_session_tickets off;
        location / {{ grpc_pass grpc://grpc_up; }}
    }}
}}
stream {{
    ssl_protocols TLSv1.3;
",
        common = http_common(dir, "server"),
        upg = up.grpc,
        grpc = p.grpc,
    ));
    for (port, upstream, resume) in [
        (p.tcp_grpc, up.grpc, false),
        (p.echo, up.echo, false),
        (p.echo_resume, up.echo, true),
        (p.sink, up.sink, false),
    ] {
        let r = if resume {
            ""
        } else {
            "ssl_session_cache off; ssl_session_tickets off;"
        };
        c.push_str(&format!(
            "    server {{
        listen 127.0.0.1:{port} ssl;
        {tls}
        {r}
        proxy_half_close on;
        proxy_pass {upstream};
    }}
"
        ));
    }
    c.push_str("}\n");
    c
}

/// The client side: `listen … http2` → `grpc_pass grpcs://` for gRPC,
/// stream `proxy_ssl on` for the others.
fn client_config(m: &Material, dir: &Path, p: &Ports, s: &Ports) -> String {
    let (crt, key, ca) = (
        m.client[0].display(),
        m.client[1].display(),
        m.ca_pem.display(),
    );
    let mut c = main_context(dir, "client");
    c.push_str(&format!(
        "http {{
{common}
    upstream grpc_s {{ server 127.0.0.1:{sgrpc}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
    server {{
        listen 127.0.0.1:{grpc} http2;
        location / {{
            grpc_pass grpcs://grpc_s;
            grpc_ssl_certificate {crt}; grpc_ssl_certificate_key {key};
            grpc_ssl_trusted_certificate {ca}; grpc_ssl_verify on;
            grpc_ssl_name localhost; grpc_ssl_server_name on;
            grpc_ssl_protocols TLSv1.3; grpc_ssl_session_reuse off;
        }}
    }}
}}
stream {{
",
        common = http_common(dir, "client"),
        sgrpc = s.grpc,
        grpc = p.grpc,
    ));
    for (port, server, resume) in [
        (p.tcp_grpc, s.tcp_grpc, false),
        (p.echo, s.echo, false),
        (p.echo_resume, s.echo_resume, true),
        (p.sink, s.sink, false),
    ] {
        let r = if resume { "on" } else { "off" };
        c.push_str(&format!(
            "    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{server};
        proxy_half_close on;
        proxy_ssl on;
        proxy_ssl_certificate {crt}; proxy_ssl_certificate_key {key};
        proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on;
        proxy_ssl_name localhost; proxy_ssl_server_name on;
        proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse {r};
    }}
"
        ));
    }
    c.push_str("}\n");
    c
}

/// Writes one side's config to `<dir>/nginx-<side>.conf` and starts nginx
/// in the foreground on it, with `dir` as its prefix.
fn spawn(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    config: &str,
    p: &Ports,
    launch: &Launch,
) -> anyhow::Result<Peer> {
    let path = dir.join(format!("nginx-{side}.conf"));
    std::fs::create_dir_all(dir.join(format!("nginx-{side}-tmp")))?;
    std::fs::write(&path, config)?;
    let mut cmd = launch.command(&bins.nginx, &format!("nginx-{side}"));
    cmd.arg("-e")
        .arg(dir.join(format!("nginx-{side}.error.log")))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path);
    // Under callgrind, one process (no master, one worker's event loop):
    // valgrind's gdbserver, which callgrind_control needs, is not set up
    // in children forked without exec, so workers could not be zeroed
    // and dumped.
    if launch.callgrind.is_some() {
        cmd.args(["-g", "daemon off; master_process off;"]);
    } else {
        cmd.args(["-g", "daemon off;"]);
    }
    spawn_peer(
        &format!("nginx ({side})"),
        cmd,
        &dir.join(format!("nginx-{side}.log")),
        &p.all(true),
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
            "nginx-server.conf",
            &server_config(&m, dir, &server, &upstream()),
        );
        assert_pinned(
            "nginx-client.conf",
            &client_config(&m, dir, &client, &server),
        );
    }
}
