//! mtlsd itself: one `mtlsd run` per side with its own config, listening
//! on ports it picks (`127.0.0.1:0`) and reports in its log, and its own
//! copy of the identity so the reload test can rotate one side.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{Binaries, Endpoints, L4Endpoints, Launch, Material};
use crate::support::{self, Daemon};
use crate::upstream::UpstreamAddrs;

/// mtlsd's settings that matter for the comparison, for the report.
pub(super) const SETTINGS: &[&str] = &[
    "the binary given with --mtlsd; bench/run measures the shipping build (scripts/build-release: fat LTO, one codegen unit, profile-guided from a training run); runtime.worker_threads = 1, mtlsd's default, which runs everything on tokio's current-thread scheduler (mtlsd-2w: 2 workers of the multi-thread one)",
    "rustls 0.23 with aws-lc-rs, defaults: TLS 1.3 only, session resumption on (rustls default, no setting to turn it off)",
    "grpc mode: h2c in, pooled h2 over mTLS between the pair, pooled h2c to the upstream",
    "tcp mode for L4; max_connections = 8192 per listener; no inventory (chain + name checks only, as the peers do)",
    "file watching on (default) except in the reload test (SIGHUP only)",
];

/// mtlsd-2w: what differs from mtlsd, for the report.
pub(super) const SETTINGS_2W: &[&str] = &[
    "mtlsd as above with `[runtime] worker_threads = 2` on both sides (one per core); measured on the L7 (gRPC) listener only",
];

/// Starts the server side, then the client side pointed at it; returns
/// (client, server). `workers` sets `runtime.worker_threads` (mtlsd's
/// default when none).
pub(super) fn start(
    bins: &Binaries,
    dir: &Path,
    m: &Material,
    up: &UpstreamAddrs,
    launch: &Launch,
    workers: Option<u32>,
) -> anyhow::Result<(Daemon, Daemon)> {
    let sides = Sides { launch, workers };
    let server = start_side(bins, dir, "server", m, &m.server, up, None, &sides)?;
    let client = start_side(bins, dir, "client", m, &m.client, up, Some(&server), &sides)?;
    Ok((client, server))
}

/// What both sides of a pair are started with.
struct Sides<'a> {
    launch: &'a Launch,
    workers: Option<u32>,
}

/// Where the load goes: the client side's listeners, as it reported them.
/// mtlsd has no setting to turn resumption off, so `echo` serves both
/// echo figures.
pub(super) fn endpoints(client: &Daemon, server: &Daemon) -> anyhow::Result<Endpoints> {
    Ok(Endpoints {
        grpc_l7: Some(client.addr("grpc")?),
        l4: Some(L4Endpoints {
            grpc: client.addr("tcp-grpc")?,
            echo: client.addr("echo")?,
            echo_resume: client.addr("echo")?,
            sink: client.addr("sink")?,
        }),
        server_echo: Some(server.addr("echo")?),
    })
}

/// The cert and key paths an mtlsd side uses (for rotation in the reload
/// test): `<dir>/<side>/host.crt`, `host.key`.
pub(crate) fn identity_paths(pair_dir: &Path, side: &str) -> (PathBuf, PathBuf) {
    let d = pair_dir.join(side);
    (d.join("host.crt"), d.join("host.key"))
}

/// One mtlsd listener: name, protocol, and where it forwards (the
/// upstream on the server side, the server side's listener of the same
/// name on the client side).
type Listener = (&'static str, &'static str, SocketAddr);

/// The server side's listeners, in front of the upstream; the client
/// side has the same names and protocols, each forwarding to the server
/// side's listener of its name.
fn inbound(up: &UpstreamAddrs) -> [Listener; 4] {
    [
        ("grpc", "grpc", up.grpc),
        ("tcp-grpc", "tcp", up.grpc),
        ("echo", "tcp", up.echo),
        ("sink", "tcp", up.sink),
    ]
}

/// Starts one side on its own copy of `identity`: with no `server`, the
/// server side, inbound in front of the upstream; with one, the client
/// side, outbound to `server`'s listeners.
#[allow(clippy::too_many_arguments)]
fn start_side(
    bins: &Binaries,
    dir: &Path,
    side: &str,
    m: &Material,
    identity: &[PathBuf; 3],
    up: &UpstreamAddrs,
    server: Option<&Daemon>,
    sides: &Sides<'_>,
) -> anyhow::Result<Daemon> {
    let d = dir.join(side);
    std::fs::create_dir_all(&d)?;
    // Own copies, so the reload test can rotate one side's files.
    let (crt, key) = identity_paths(dir, side);
    std::fs::copy(&identity[0], &crt)?;
    support::replace(&key, &std::fs::read_to_string(&identity[1])?, 0o600)?;
    let listeners = match server {
        None => inbound(up).to_vec(),
        Some(server) => inbound(up)
            .iter()
            .map(|&(name, protocol, _)| Ok((name, protocol, server.addr(name)?)))
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let text = config(
        dir,
        side,
        &m.ca_pem,
        sides.launch.watch,
        sides.workers,
        server.is_some(),
        &listeners,
    );
    let config = d.join("mtlsd.toml");
    std::fs::write(&config, text)?;
    let tag = match sides.workers {
        Some(n) => format!("mtlsd-{n}w-{side}"),
        None => format!("mtlsd-{side}"),
    };
    Daemon::start_with(sides.launch.command(&bins.mtlsd, &tag), &config)
}

/// The config of one mtlsd side: `outbound` for the client side;
/// `workers` sets `runtime.worker_threads`.
fn config(
    dir: &Path,
    side: &str,
    ca: &Path,
    watch: bool,
    workers: Option<u32>,
    outbound: bool,
    listeners: &[Listener],
) -> String {
    let d = dir.join(side);
    let (crt, key) = identity_paths(dir, side);
    let mut text = format!(
        "state_dir = {state:?}\n\
         [identity]\ncert = {crt:?}\nkey = {key:?}\n\
         [trust_domains.mesh]\nbundle = {ca:?}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [reload]\nwatch = {watch}\n\
         [shutdown]\ndrain_timeout = \"1s\"\n",
        state = d.join("state"),
    );
    if let Some(n) = workers {
        text.push_str(&format!("[runtime]\nworker_threads = {n}\n"));
    }
    for &(name, protocol, upstream) in listeners {
        if outbound {
            text.push_str(&format!(
                "[[outbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 server_name = \"localhost\"\nprotocol = \"{protocol}\"\nmax_connections = 8192\n"
            ));
        } else {
            text.push_str(&format!(
                "[[inbound]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n\
                 protocol = \"{protocol}\"\nmax_connections = 8192\n"
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::lo;
    use crate::systems::testing::{DIR, assert_pinned, material, upstream};

    #[test]
    fn configs_match_the_pinned_renders() {
        let m = material();
        let dir = Path::new(DIR);
        let server_side = inbound(&upstream());
        // The addresses the server side would have reported.
        let client_side = [24001, 24002, 24003, 24004]
            .map(lo)
            .into_iter()
            .zip(server_side)
            .map(|(addr, (name, protocol, _))| (name, protocol, addr))
            .collect::<Vec<_>>();
        assert_pinned(
            "mtlsd-server.toml",
            &config(dir, "server", &m.ca_pem, true, None, false, &server_side),
        );
        assert_pinned(
            "mtlsd-client.toml",
            &config(dir, "client", &m.ca_pem, false, None, true, &client_side),
        );
        assert_pinned(
            "mtlsd-2w-server.toml",
            &config(dir, "server", &m.ca_pem, true, Some(2), false, &server_side),
        );
        assert_pinned(
            "mtlsd-2w-client.toml",
            &config(dir, "client", &m.ca_pem, true, Some(2), true, &client_side),
        );
    }
}
