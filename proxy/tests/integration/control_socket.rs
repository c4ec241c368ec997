//! The local control socket (`admin.socket`): the real binary as daemon
//! and as CLI. `reload` and `status` reach the daemon through it without
//! this host's client key or its material on disk; only root and the
//! daemon's own uid are served; a dead daemon's socket is replaced, a live
//! one's refused; the file goes at shutdown.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use mtlsd_devca::CertificateAuthority;
use nix::sys::signal::Signal;
use sha2::Digest;

use crate::support::process::{MtlsdProcess, run_as_to_end, run_to_end};
use crate::support::*;

/// Any uid that is neither root nor the daemon's.
const STRANGER: u32 = 65533;
const NOBODY: u32 = 65534;

struct Host {
    pki: Pki,
    config: PathBuf,
    socket: PathBuf,
    bundle: PathBuf,
}

impl Host {
    /// A host whose admin section gets `admin`, its mesh bundle pinned to
    /// its CA if `pin`, with its control socket in `<dir>/run`.
    fn new(admin: &str, pin: bool) -> Self {
        let pki = Pki::new();
        let mesh = if pin {
            format!("sha256 = [{:?}]", sha256_hex(pki.ca.cert_der()))
        } else {
            String::new()
        };
        let files = pki.host("host", &localhost_leaf("host"));
        let bundle = pki.ca_file();
        let run = pki.path("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::create_dir(pki.path("state")).unwrap();
        let socket = run.join("admin.sock");
        let text = format!(
            "state_dir = {state:?}\n\n[identity]\ncert = {cert:?}\nkey = {key:?}\n\n\
             [trust_domains.mesh]\nbundle = {bundle:?}\n{mesh}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nsocket = {socket:?}\n{admin}\n\n\
             [reload]\nwatch = false\n\n[shutdown]\ndrain_timeout = \"2s\"\n\n\
             [[inbound]]\nname = \"in\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n",
            state = pki.path("state"),
            cert = files.cert,
            key = files.key,
        );
        let config = pki.write("mtlsd.toml", &text, 0o644);
        Self {
            pki,
            config,
            socket,
            bundle,
        }
    }

    fn config_arg(&self) -> String {
        self.config.display().to_string()
    }

    async fn start(&self, uid: Option<u32>) -> MtlsdProcess {
        let args = ["run", "--config", &self.config_arg()];
        let mut mtlsd = match uid {
            Some(uid) => MtlsdProcess::spawn_as(uid, &args, &[]),
            None => MtlsdProcess::spawn(&args, &[]),
        };
        mtlsd
            .find_log_where(
                "admin socket listening (root and mtlsd's own user)",
                |v| v["path"] == self.socket.display().to_string(),
                SOON,
            )
            .await;
        mtlsd
    }
}

/// `mtlsd ARGS` as `uid` with `env`: exit status and stdout + stderr.
async fn cli(uid: Option<u32>, args: &[&str], env: &[(&str, &Path)]) -> (ExitStatus, String) {
    let (status, stdout, stderr) = cli_split(uid, args, env).await;
    (status, format!("{stdout}\n{stderr}"))
}

/// [`cli`] with stdout and stderr apart.
async fn cli_split(
    uid: Option<u32>,
    args: &[&str],
    env: &[(&str, &Path)],
) -> (ExitStatus, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, PathBuf)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_path_buf()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &Path)> = env.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
        run_as_to_end(uid, &args, &env, Duration::from_secs(30))
    })
    .await
    .unwrap()
}

fn sha256_hex(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Admin endpoint on mTLS, mesh bundle pinned. The CLI that cannot load
/// its client key (issue 18: `ExecReload` without the token PIN; here the
/// key path overridden to a missing file) and the CLI whose bundle on
/// disk the pin refuses (issue 17) both reach the daemon through the
/// socket and print its real answer; the TCP path fails for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_status_work_through_the_socket_without_the_client_key_or_good_material() {
    let host = Host::new("tls = true", true);
    let mut mtlsd = host.start(None).await;
    let admin = mtlsd.admin_addr().await.to_string();
    let meta = std::fs::symlink_metadata(&host.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");

    let config = host.config_arg();
    let no_key: &[(&str, &Path)] = &[("MTLSD_IDENTITY__KEY", Path::new("/nonexistent/host.key"))];

    // Without its key, the TCP path cannot even start...
    let (status, out) = cli(
        None,
        &["status", "--admin", &admin, "--config", &config],
        no_key,
    )
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot load this host's TLS material"),
        "{out}"
    );
    // ...but the socket needs no key.
    let (status, out) = cli(None, &["status", "--config", &config], no_key).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("ready, generation 1"), "{out}");

    // A reissued certificate: `mtlsd reload` without the key applies it.
    let reissued = host.pki.host("host", &localhost_leaf("host"));
    let (status, out) = cli(None, &["reload", "--config", &config], no_key).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("reload applied: generation 2"), "{out}");
    let (_, out, err) = cli_split(None, &["status", "--json", "--config", &config], no_key).await;
    let answer: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    assert_eq!(answer["generation"], 2, "{out}");
    let serial = answer["identity"]["serial"].as_str().unwrap_or_default();
    let serial = serial.replace(':', "").to_ascii_lowercase();
    assert_eq!(
        serial.trim_start_matches('0'),
        reissued.issued.serial_hex,
        "{out}"
    );

    // Issue 17: the bundle on disk replaced by a CA the pin refuses. The
    // CLI cannot build its mTLS client from it, so TCP fails...
    let rogue = CertificateAuthority::new("test mesh CA").unwrap();
    std::fs::write(&host.bundle, rogue.cert_pem()).unwrap();
    let (status, out) = cli(
        None,
        &["status", "--admin", &admin, "--config", &config],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("cannot load this host's TLS material"),
        "{out}"
    );
    // ...while the socket carries the reload, and the daemon's rejection.
    let (status, out) = cli(None, &["reload", "--config", &config], &[]).await;
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("rejected, still serving generation 2"),
        "{out}"
    );
    assert!(out.contains(&sha256_hex(rogue.cert_der())), "{out}");
    let (status, out) = cli(None, &["status", "--config", &config], &[]).await;
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("ready, generation 2"), "{out}");

    mtlsd.signal(Signal::SIGTERM);
    assert_eq!(mtlsd.exited(SOON).await.code(), Some(0));
    assert!(!host.socket.exists(), "the socket is removed at shutdown");
}

/// The daemon runs as nobody: nobody and root are served on the socket;
/// another uid is stopped by the file mode (0660), and when the mode lets
/// it connect, by the uid check: a 403, a warning, a count. The CLI then
/// falls back to TCP, as before the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_and_the_daemons_own_uid_are_served_and_refusals_are_counted() {
    let host = Host::new("", false);
    let dir = host.pki.dir.path();
    let chown = std::process::Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir)
        .status()
        .unwrap();
    assert!(chown.success());
    // Traversable, so that the socket's own mode decides.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut mtlsd = host.start(Some(NOBODY)).await;
    let admin = mtlsd.admin_addr().await;
    let meta = std::fs::symlink_metadata(&host.socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o660));
    let counted = |result: &'static str| async move {
        let (code, text) = http_get(admin, "/metrics").await;
        assert_eq!(code, 200);
        metric(
            &text,
            "mtlsd_admin_socket_connections_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    };

    let config = host.config_arg();
    let status = ["status", "--config", config.as_str()];
    // No TCP fallback: whatever answers, answers on the socket.
    let no_tcp: &[(&str, &Path)] = &[("MTLSD_ADMIN__LISTEN", Path::new("127.0.0.1:1"))];
    for uid in [Some(NOBODY), None] {
        let (code, out) = cli(uid, &status, no_tcp).await;
        assert_eq!(code.code(), Some(0), "as {uid:?}: {out}");
        assert!(out.contains("ready, generation 1"), "as {uid:?}: {out}");
    }
    assert_eq!(counted("accepted").await, 2.0);

    // Another uid: the mode stops it before the daemon sees it.
    let (code, out) = cli(Some(STRANGER), &status, no_tcp).await;
    assert_eq!(code.code(), Some(3), "{out}");
    assert!(
        out.contains(&format!(
            "cannot use the control socket {}: cannot connect: permission denied (run as root or the mtlsd user)",
            host.socket.display()
        )),
        "{out}"
    );
    assert!(out.contains("no mtlsd answered at 127.0.0.1:1"), "{out}");
    assert_eq!(counted("refused").await, 0.0);

    // A mode that lets it connect: the uid check refuses it.
    std::fs::set_permissions(&host.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = cli(Some(STRANGER), &status, no_tcp).await;
    assert_eq!(code.code(), Some(3), "{out}");
    assert!(
        out.contains(&format!("uid {STRANGER} may not use the control socket")),
        "{out}"
    );
    mtlsd
        .wait_for_log_where(
            "admin socket connection refused: only root and mtlsd's own user may use it",
            |v| v["uid"] == STRANGER,
            SOON,
        )
        .await;
    assert_eq!(counted("refused").await, 1.0);
    assert_eq!(counted("accepted").await, 2.0);

    // With admin.listen reachable (the ephemeral port the daemon got), it
    // gets its answer over TCP, as before.
    let listen = PathBuf::from(admin.to_string());
    let (code, out) = cli(Some(STRANGER), &status, &[("MTLSD_ADMIN__LISTEN", &listen)]).await;
    assert_eq!(code.code(), Some(0), "{out}");
    assert!(out.contains("ready, generation 1"), "{out}");
    assert_eq!(counted("refused").await, 2.0);

    mtlsd.signal(Signal::SIGTERM);
    assert_eq!(mtlsd.exited(SOON).await.code(), Some(0));
    assert!(!host.socket.exists(), "the socket is removed at shutdown");
}

/// A second daemon on a live socket refuses to start, naming the path,
/// and leaves the first one serving; a killed daemon's socket is replaced
/// by the next start; a file that is not a socket is never removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_refuses_a_second_daemon_and_a_dead_ones_is_replaced() {
    let host = Host::new("", false);
    let config = host.config_arg();
    let run = ["run", "--config", config.as_str()];
    let status = ["status", "--config", config.as_str()];
    let no_tcp: &[(&str, &Path)] = &[("MTLSD_ADMIN__LISTEN", Path::new("127.0.0.1:1"))];

    let mut first = host.start(None).await;
    let second = config.clone();
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run_to_end(&["run", "--config", second.as_str()], SOON)
    })
    .await
    .unwrap();
    assert_eq!(code.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "admin.socket {}: another mtlsd answers on it",
            host.socket.display()
        )),
        "{stderr}"
    );
    assert!(first.is_running());
    let (code, out) = cli(None, &status, no_tcp).await;
    assert_eq!(code.code(), Some(0), "the first still serves: {out}");

    // Killed: nothing removes its socket...
    first.signal(Signal::SIGKILL);
    first.exited(SOON).await;
    assert!(
        std::fs::symlink_metadata(&host.socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let (code, out) = cli(None, &status, no_tcp).await;
    assert_eq!(code.code(), Some(3), "{out}");
    assert!(out.contains("nothing listens on it"), "{out}");
    // ...the next start replaces it.
    let mut next = MtlsdProcess::spawn(&run, &[]);
    next.wait_for_log(
        "admin socket: removing the stale socket of a daemon that is gone",
        SOON,
    )
    .await;
    next.find_log_where(
        "admin socket listening (root and mtlsd's own user)",
        |_| true,
        SOON,
    )
    .await;
    let (code, out) = cli(None, &status, no_tcp).await;
    assert_eq!(code.code(), Some(0), "{out}");
    next.signal(Signal::SIGTERM);
    assert_eq!(next.exited(SOON).await.code(), Some(0));
    assert!(!host.socket.exists(), "the socket is removed at shutdown");

    // Not a socket: left alone, start-up refused.
    std::fs::write(&host.socket, "keep me").unwrap();
    let again = config.clone();
    let (code, _, stderr) =
        tokio::task::spawn_blocking(move || run_to_end(&["run", "--config", again.as_str()], SOON))
            .await
            .unwrap();
    assert_eq!(code.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "admin.socket {}: exists and is not a socket",
            host.socket.display()
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&host.socket).unwrap(), "keep me");
}
