//! `protocol = "mariadb"`: MariaDB's TLS is negotiated inside its own
//! protocol, so mtlsd speaks the start of it.
//!
//! Outbound (upgrade): a local plaintext client talks to mtlsd; mtlsd hides
//! CLIENT_SSL from it, sends the server the SSLRequest built from the
//! client's own capabilities, completes TLS (verify_full by default), and
//! forwards the client's HandshakeResponse over TLS. Inbound (terminate):
//! mtlsd advertises CLIENT_SSL, requires the client's SSLRequest (a
//! plaintext response gets an ERR), completes mTLS with the listener's
//! policy, and forwards the response to the local server in plaintext.
//!
//! Until the server's OK or ERR ends the connection phase, both directions
//! are relayed concurrently (auth plugins send several packets back to
//! back) with sequence ids shifted by the packet mtlsd added or removed;
//! after it, bytes are copied untouched. Auth data is bound to the
//! greeting's nonce, not to TLS, so mtlsd never needs a password.
//! Malformed or oversized connection-phase bytes close the connection with
//! an ERR where the client can still read one; lengths are checked before
//! anything is allocated.

pub mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::wire::{Message, WireError};
use crate::config::{ListenerConfig, Outbound, Upstream};
use crate::reject::RejectReason;
use crate::relay::relay;
use crate::transport::handshake::{self, Handshaker};
use crate::upstream::{self, UpstreamStream};

/// ER_ACCESS_DENIED_ERROR: the client must use TLS with a certificate.
const ERR_ACCESS: (u16, &[u8; 5]) = (1045, b"28000");
/// ER_UNKNOWN_ERROR: mtlsd cannot make a secure connection for the client.
const ERR_UNSECURE: (u16, &[u8; 5]) = (1105, b"HY000");

fn err(kind: (u16, &[u8; 5]), message: &str) -> Vec<u8> {
    wire::err_payload(kind.0, kind.1, message)
}

#[derive(Debug, thiserror::Error)]
enum PhaseError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Refused(#[from] PhaseRefusal),
    /// The TLS handshake with the server failed; the handshake has logged
    /// and counted it already.
    #[error("TLS to the server failed: {0}")]
    ServerTls(#[source] std::io::Error),
    #[error("the connection phase did not finish within {0:?}")]
    Timeout(std::time::Duration),
    /// Past the connection phase: the byte copy ended with an error.
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
}

/// What the client of an upgrade listener is told when the server offers
/// no TLS.
const SERVER_WITHOUT_TLS: &str =
    "mtlsd: the MariaDB server does not offer TLS; refusing to continue in plaintext";
/// What the client of an upgrade listener is told when it asks for TLS.
const CLIENT_TLS_IN_UPGRADE: &str = "mtlsd: TLS between a local client and mtlsd is not \
                                     supported in upgrade mode; connect without TLS (mtlsd \
                                     encrypts the connection to the server)";

/// Why mtlsd ended a connection phase on purpose.
#[derive(Debug, thiserror::Error)]
enum PhaseRefusal {
    /// The server refused us outright (host blocked, too many
    /// connections); its ERR was passed on to the client.
    #[error("the {}server answered with an ERR ({err})", if *local { "local " } else { "" })]
    ServerErr {
        /// The inbound side's local server, not a remote one.
        local: bool,
        /// The server's own words ([`wire::err_text`]): a string, as the
        /// peer's text is all there is.
        err: String,
    },
    #[error("{}", SERVER_WITHOUT_TLS)]
    ServerWithoutTls,
    #[error("{}", CLIENT_TLS_IN_UPGRADE)]
    ClientTlsInUpgrade,
    #[error("client did not request TLS")]
    ClientWithoutTls,
}

impl PhaseError {
    /// The text of the ERR mtlsd sends the client when a phase fails for
    /// this reason, if one is worth sending (refusals send their own).
    fn client_message(&self) -> Option<String> {
        match self {
            Self::Wire(WireError::Closed)
            | Self::Refused(_)
            | Self::ServerTls(_)
            | Self::Relay(_) => None,
            Self::Wire(e) => Some(format!(
                "mtlsd: malformed MariaDB connection phase ({e}); see the mtlsd log"
            )),
            Self::Io(_) => Some(
                "mtlsd: the connection to the MariaDB server failed during login; see the mtlsd log"
                    .to_owned(),
            ),
            Self::Timeout(limit) => Some(format!(
                "mtlsd: the MariaDB login did not finish within {limit:?}"
            )),
        }
    }
}

/// The sequence id the client expects on the next packet it reads, kept
/// up to date while the connection phase is relayed, so an ERR mtlsd sends
/// in the middle of it is one the client accepts.
#[derive(Debug, Default)]
struct ClientSeq(AtomicU8);

impl ClientSeq {
    fn after(&self, seq: u8, packets: u8) {
        self.0.store(seq.wrapping_add(packets), Ordering::SeqCst);
    }

    fn next(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Best effort: tells the client why its connection is about to close.
async fn tell_client<W: AsyncWrite + Unpin>(client: &mut W, seq: &ClientSeq, error: &PhaseError) {
    if let Some(message) = error.client_message() {
        let payload = err(ERR_UNSECURE, &message);
        let sent = send(client, seq.next(), &payload);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sent).await;
    }
}

/// Reads whole messages from a stream, keeping what it read past one.
struct Reader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(4096),
        }
    }

    async fn message(&mut self) -> Result<Message, PhaseError> {
        loop {
            if let Some(message) = wire::take_message(&mut self.buf, wire::MAX_PHASE_MESSAGE)? {
                return Ok(message);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(WireError::Closed.into());
            }
        }
    }
}

/// Reads exactly one message without reading past it (before a TLS
/// handshake on the same socket, nothing may be consumed early).
async fn read_exact_message<R: AsyncRead + Unpin>(io: &mut R) -> Result<Message, PhaseError> {
    let mut header = [0u8; 4];
    io.read_exact(&mut header).await.map_err(closed)?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    if len > wire::MAX_PHASE_MESSAGE || len == wire::MAX_CHUNK {
        return Err(WireError::TooLarge(len).into());
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.map_err(closed)?;
    Ok(Message {
        seq: header[3],
        payload,
        packets: 1,
    })
}

fn closed(e: std::io::Error) -> PhaseError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        WireError::Closed.into()
    } else {
        e.into()
    }
}

async fn send<W: AsyncWrite + Unpin>(io: &mut W, seq: u8, payload: &[u8]) -> std::io::Result<()> {
    io.write_all(&wire::encode(seq, payload)).await?;
    io.flush().await
}

/// Serves one connection on an outbound mariadb listener (upgrade).
pub async fn serve_outbound(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    outbound: &Outbound,
    mut client: TcpStream,
    client_addr: SocketAddr,
) {
    let deadline = Instant::now() + listener.timeouts.handshake;
    let judged_under = ctx.store.current().number();
    let seq = ClientSeq::default();
    let phase = async {
        let client = &mut client;
        let mut server = upstream::connect_tcp(&outbound.remote, listener.timeouts.connect).await?;
        let mut greeting = read_exact_message(&mut server).await?;
        if greeting.first_byte() == Some(0xFF) {
            // The server refused us outright (host blocked, too many
            // connections): pass its ERR on.
            send(client, greeting.seq, &greeting.payload).await?;
            let err = wire::err_text(&greeting.payload);
            return Err(PhaseRefusal::ServerErr { local: false, err }.into());
        }
        if !wire::greeting_offers_tls(&greeting.payload)? {
            send(client, 0, &err(ERR_UNSECURE, SERVER_WITHOUT_TLS)).await?;
            return Err(PhaseRefusal::ServerWithoutTls.into());
        }
        wire::set_greeting_tls(&mut greeting.payload, false)?;
        send(client, greeting.seq, &greeting.payload).await?;
        // The client answers with greeting + 1 and then expects + 2.
        seq.after(greeting.seq, 2);

        let mut client_reader = Reader::new(client);
        let mut response = client_reader.message().await?;
        seq.after(response.seq, response.packets);
        if wire::response_caps(&response.payload)? & wire::CLIENT_SSL != 0 {
            send(
                &mut client_reader.inner,
                seq.next(),
                &err(ERR_UNSECURE, CLIENT_TLS_IN_UPGRADE),
            )
            .await?;
            return Err(PhaseRefusal::ClientTlsInUpgrade.into());
        }
        send(
            &mut server,
            response.seq,
            &wire::ssl_request_from(&response.payload)?,
        )
        .await?;
        let mut tls =
            match handshake::handshake_over(ctx, listener, outbound, server, client_addr).await {
                Ok(tls) => tls,
                Err(e) => {
                    // The client waits for the server's answer to its response:
                    // tell it why there will be none.
                    let message =
                        format!("mtlsd: TLS to the MariaDB server failed: {e} (see the mtlsd log)");
                    let _ = send(
                        &mut client_reader.inner,
                        seq.next(),
                        &err(ERR_UNSECURE, &message),
                    )
                    .await;
                    return Err(PhaseError::ServerTls(e));
                }
            };
        response.seq = response.seq.wrapping_add(1);
        send(&mut tls, response.seq, &response.payload).await?;
        Ok((client_reader, tls))
    };
    let (client_reader, tls) = match within(deadline, listener, phase).await {
        Ok(streams) => streams,
        Err(e) => {
            tell_client(&mut client, &seq, &e).await;
            return phase_ended(ctx, listener, client_addr, &e);
        }
    };
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .into();
    let registration = ctx.register(listener, client_addr, chain, judged_under);
    // Client → server +1 (mtlsd added the SSLRequest), server → client −1.
    let relayed = finish_and_relay(client_reader, Reader::new(tls), 1, &seq, deadline, listener);
    tokio::select! {
        result = relayed => connection_ended(ctx, listener, client_addr, result),
        () = registration.closed_by_policy() => {
            tracing::info!(listener = %listener.name, peer = %client_addr, "connection closed: peer no longer qualifies");
        }
    }
}

/// Serves one connection on an inbound mariadb listener (terminate).
pub async fn serve_inbound(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    upstream: &Upstream,
    mut client: TcpStream,
    peer: SocketAddr,
) {
    let deadline = Instant::now() + listener.timeouts.handshake;
    let seq = ClientSeq::default();
    let before_tls = async {
        let client = &mut client;
        let upstream = upstream::connect(upstream, listener.timeouts.connect).await?;
        let mut server: Box<dyn Stream> = match upstream {
            UpstreamStream::Tcp(tcp) => Box::new(tcp),
            UpstreamStream::Unix(unix) => Box::new(unix),
        };
        let mut greeting = read_exact_message(&mut server).await?;
        if greeting.first_byte() == Some(0xFF) {
            send(client, greeting.seq, &greeting.payload).await?;
            let err = wire::err_text(&greeting.payload);
            return Err(PhaseRefusal::ServerErr { local: true, err }.into());
        }
        wire::set_greeting_tls(&mut greeting.payload, true)?;
        send(client, greeting.seq, &greeting.payload).await?;
        seq.after(greeting.seq, 2);
        let request = read_exact_message(client).await?;
        seq.after(request.seq, request.packets);
        let is_ssl_request = request.payload.len() == wire::SSL_REQUEST_LEN
            && wire::response_caps(&request.payload)? & wire::CLIENT_SSL != 0;
        if !is_ssl_request {
            let message = "mtlsd: this server requires TLS with a client certificate";
            send(client, seq.next(), &err(ERR_ACCESS, message)).await?;
            return Err(PhaseRefusal::ClientWithoutTls.into());
        }
        // Over TLS the client sends its response as SSLRequest + 1 and
        // expects the server's next packet after that.
        seq.after(request.seq, 2);
        Ok(server)
    };
    let server = match within(deadline, listener, before_tls).await {
        Ok(server) => server,
        Err(e) => {
            tell_client(&mut client, &seq, &e).await;
            return phase_ended(ctx, listener, peer, &e);
        }
    };
    // The TLS handshake starts right after the SSLRequest; nothing past it
    // was read from the socket.
    // The handshake counts its own refusals; the phase's deadline bounds it
    // too, so the whole phase stays within one handshake_timeout.
    let accepted =
        tokio::time::timeout_at(deadline, handshake::accept(ctx, listener, client, peer));
    let accepted = match accepted.await {
        Ok(Some(accepted)) => accepted,
        Ok(None) => return,
        Err(_) => {
            let e = PhaseError::Timeout(listener.timeouts.handshake);
            return phase_ended(ctx, listener, peer, &e);
        }
    };
    let registration = ctx.register(listener, peer, accepted.chain.clone(), accepted.generation);
    let mut tls = accepted.tls;
    let after_tls = async {
        let mut client_reader = Reader::new(&mut tls);
        let mut server = server;
        let mut response = client_reader.message().await?;
        seq.after(response.seq, response.packets);
        wire::set_response_tls(&mut response.payload, false)?;
        send(&mut server, response.seq.wrapping_sub(1), &response.payload).await?;
        Ok::<_, PhaseError>((client_reader.buf, server))
    };
    let (client_buf, server) = match within(deadline, listener, after_tls).await {
        Ok(streams) => streams,
        Err(e) => {
            tell_client(&mut tls, &seq, &e).await;
            return phase_ended(ctx, listener, peer, &e);
        }
    };
    let client_reader = Reader {
        inner: tls,
        buf: client_buf,
    };
    // Client → server −1 (mtlsd removed the SSLRequest), server → client +1.
    let relayed = finish_and_relay(
        client_reader,
        Reader::new(server),
        -1,
        &seq,
        deadline,
        listener,
    );
    tokio::select! {
        result = relayed => connection_ended(ctx, listener, peer, result),
        () = registration.closed_by_policy() => {
            tracing::info!(listener = %listener.name, %peer, "connection closed: peer no longer qualifies");
        }
    }
}

/// Runs one step of the connection phase, bounded by the phase's deadline.
async fn within<T>(
    deadline: Instant,
    listener: &ListenerConfig,
    step: impl Future<Output = Result<T, PhaseError>>,
) -> Result<T, PhaseError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or(Err(PhaseError::Timeout(listener.timeouts.handshake)))
}

/// Any byte stream mtlsd relays.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Relays the rest of the connection phase in both directions at once,
/// shifting client → server sequence ids by `client_delta` (and the other
/// way by its negation) until the server's OK/ERR, then copies bytes.
async fn finish_and_relay<C, S>(
    client: Reader<C>,
    server: Reader<S>,
    client_delta: i8,
    seq: &ClientSeq,
    deadline: Instant,
    listener: &ListenerConfig,
) -> Result<(), PhaseError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let Reader {
        inner: client,
        buf: client_buf,
    } = client;
    let Reader {
        inner: server,
        buf: server_buf,
    } = server;
    let (client_r, mut client_w) = tokio::io::split(client);
    let (server_r, mut server_w) = tokio::io::split(server);
    let mut client_r = Reader {
        inner: client_r,
        buf: client_buf,
    };
    let mut server_r = Reader {
        inner: server_r,
        buf: server_buf,
    };
    let done = AtomicBool::new(false);
    let done_notify = Notify::new();

    let server_to_client = async {
        loop {
            let message = server_r.message().await?;
            let ends = message.ends_connection_phase();
            if ends {
                // Set before the client can see OK and send a command.
                done.store(true, Ordering::SeqCst);
            }
            let client_seq = message.seq.wrapping_add_signed(-client_delta);
            // Before the write: once the client has it, its answer may be
            // read (and recorded) by the other direction at any moment.
            seq.after(client_seq, message.packets);
            client_w
                .write_all(&wire::encode(client_seq, &message.payload))
                .await?;
            client_w.flush().await?;
            if ends {
                done_notify.notify_one();
                return Ok::<_, PhaseError>(());
            }
        }
    };
    let client_to_server = async {
        loop {
            while !done.load(Ordering::SeqCst) {
                let Some(message) = wire::take_message(&mut client_r.buf, wire::MAX_PHASE_MESSAGE)?
                else {
                    break;
                };
                seq.after(message.seq, message.packets);
                let server_seq = message.seq.wrapping_add_signed(client_delta);
                server_w
                    .write_all(&wire::encode(server_seq, &message.payload))
                    .await?;
                server_w.flush().await?;
            }
            if done.load(Ordering::SeqCst) {
                return Ok::<_, PhaseError>(());
            }
            // Reading is cancel-safe: bytes stay in the buffer.
            tokio::select! {
                read = client_r.inner.read_buf(&mut client_r.buf) => {
                    if read? == 0 {
                        return Err(WireError::Closed.into());
                    }
                }
                () = done_notify.notified() => return Ok(()),
            }
        }
    };
    let phase = async { tokio::try_join!(server_to_client, client_to_server) };
    let phase = within(deadline, listener, phase).await;
    if let Err(e) = phase {
        tell_client(&mut client_w, seq, &e).await;
        return Err(e);
    }

    // Past the connection phase: whatever is buffered is commands and
    // results, passed on untouched.
    if !client_r.buf.is_empty() {
        server_w.write_all(&client_r.buf).await?;
    }
    if !server_r.buf.is_empty() {
        client_w.write_all(&server_r.buf).await?;
    }
    let client = client_r.inner.unsplit(client_w);
    let server = server_r.inner.unsplit(server_w);
    relay(client, server, ("client", "server"), listener.timeouts.idle).await?;
    Ok(())
}

/// Counts and logs a connection phase that did not finish.
fn phase_ended(ctx: &Handshaker, listener: &ListenerConfig, peer: SocketAddr, error: &PhaseError) {
    match error {
        // TLS refusals were logged and counted by the handshake.
        PhaseError::ServerTls(_) => {}
        PhaseError::Refused(reason) => {
            tracing::warn!(listener = %listener.name, %peer, reason = %reason, "MariaDB connection refused");
            ctx.stats.refused(RejectReason::Protocol);
        }
        PhaseError::Timeout(_) => {
            let e = std::io::Error::other(error.to_string());
            handshake::refused(ctx, listener, peer, RejectReason::Timeout, &e, None);
        }
        other => {
            let e = std::io::Error::other(format!("MariaDB connection phase: {other}"));
            handshake::refused(ctx, listener, peer, RejectReason::Protocol, &e, None);
        }
    }
}

/// Logs the end of a connection; a failure still inside the connection
/// phase is counted as a refusal.
fn connection_ended(
    ctx: &Handshaker,
    listener: &ListenerConfig,
    peer: SocketAddr,
    result: Result<(), PhaseError>,
) {
    match result {
        Ok(()) => tracing::debug!(listener = %listener.name, %peer, "MariaDB connection closed"),
        Err(PhaseError::Relay(e)) => {
            tracing::info!(listener = %listener.name, %peer, error = %e, "MariaDB connection ended")
        }
        // The client went away during authentication: its choice, not a
        // refusal.
        Err(PhaseError::Wire(WireError::Closed)) => {
            tracing::info!(listener = %listener.name, %peer, "MariaDB client left during the login")
        }
        Err(e) => phase_ended(ctx, listener, peer, &e),
    }
}
