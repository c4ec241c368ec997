//! Private keys that live in a PKCS#11 token and never leave it.
//!
//! `identity.key = "pkcs11:token=mesh;object=host"` names the key; the
//! module and the PIN come from `[pkcs11]`. Loading opens a session on a
//! worker thread of its own, logs in, finds the object, checks the token
//! has the mechanism the key needs, and proves the key matches the
//! certificate by signing a random challenge through the token and
//! verifying it with the certificate's public key.
//!
//! rustls calls [`Signer::sign`] synchronously from the async runtime, once
//! per handshake. Token calls never run there: each loaded key has
//! `pkcs11.sessions` worker threads (one by default), each owning its own
//! logged-in session, all fed by one bounded queue, and the
//! handshake waits for the answer at most `pkcs11.timeout` (inside
//! `block_in_place` on a multi-thread runtime, so the runtime's other tasks
//! move to another thread while it waits). A token that stops answering
//! fails handshakes with a clear error after that bound, never hangs them.
//! A token that reports its session closed or itself removed gets the
//! session reopened (and the login redone) once, on the worker.

mod uri;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rustls::crypto::CryptoProvider;
use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sha2::Digest;

pub use uri::{PKCS11_SCHEME, Pkcs11Uri, UriError};

/// How long a handshake waits for the token's signature unless
/// `pkcs11.timeout` says otherwise.
pub const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Token sessions (and worker threads) per key unless `pkcs11.sessions`
/// says otherwise.
pub const DEFAULT_TOKEN_SESSIONS: usize = 1;
/// The most `pkcs11.sessions` may ask for: more workers than signatures
/// the queue holds would never all be busy.
pub const MAX_TOKEN_SESSIONS: usize = 32;
/// Opening a session and logging in may take longer than one signature
/// (a hardware token's login can take a second or more).
const MIN_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Signatures waiting for the worker; past this, a handshake fails at once
/// instead of queueing behind a token that is not answering.
const QUEUE_DEPTH: usize = 64;

/// Where the private key lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM file.
    File(PathBuf),
    /// An object in a PKCS#11 token.
    Token(TokenKeySpec),
}

impl KeySource {
    /// The file mtlsd reads for this key: the key file itself, or the PIN
    /// file of a token key (what a reload watch should follow).
    pub fn watched_file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Token(spec) => match &spec.pin {
                PinSource::File(path) => Some(path),
                PinSource::Credential(_) => None,
            },
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Token(spec) => write!(f, "{}", spec.uri),
        }
    }
}

/// A key in a token: `identity.key` as a URI, plus `[pkcs11]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeySpec {
    pub uri: Pkcs11Uri,
    /// `pkcs11.module`: the PKCS#11 library, loaded at run time.
    pub module: PathBuf,
    pub pin: PinSource,
    /// `pkcs11.timeout`: how long one signature may take.
    pub timeout: Duration,
    /// `pkcs11.sessions`: worker threads, each with its own logged-in
    /// session, taking signatures from one queue (at least 1).
    pub sessions: usize,
}

/// What `mtlsd check` and `/status` say about a loaded token key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyInfo {
    /// The key as the URI names it: `token 'mesh' object 'host' id 01`.
    pub key: String,
    pub module: PathBuf,
    /// `pkcs11.sessions`: the workers the key was loaded with.
    pub sessions: usize,
    /// Workers holding a logged-in session now (fewer while a worker
    /// reopens a session the token closed, or after the token went away).
    pub sessions_open: usize,
}

/// Where the user PIN is read from; never the configuration itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pkcs11.pin_file`.
    File(PathBuf),
    /// `pkcs11.pin_credential`: `$CREDENTIALS_DIRECTORY/NAME`, as systemd's
    /// `LoadCredential=NAME:PATH` provides it.
    Credential(String),
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "pkcs11.pin_file {}", path.display()),
            Self::Credential(name) => write!(f, "pkcs11.pin_credential '{name}'"),
        }
    }
}

/// Why a token key cannot be used. Each message names the module, the
/// token or the object, and the reason.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("pkcs11.module {module}: cannot load the PKCS#11 module: {reason}")]
    Module { module: PathBuf, reason: String },
    #[error("{source_name}: cannot read the PIN: {reason}")]
    Pin { source_name: String, reason: String },
    #[error(
        "token '{token}' is not present in module {module} (tokens present: {})",
        if present.is_empty() { "none".to_owned() } else { present.join(", ") }
    )]
    TokenAbsent {
        token: String,
        module: PathBuf,
        present: Vec<String>,
    },
    #[error("token '{token}': the PIN from {pin} is incorrect (CKR_PIN_INCORRECT)")]
    PinIncorrect { token: String, pin: String },
    #[error("token '{token}': the user PIN is locked (CKR_PIN_LOCKED); unlock it with the SO PIN")]
    PinLocked { token: String },
    #[error("{key}: no private key object with that {}", if *by_id { "label and id" } else { "label" })]
    ObjectMissing { key: String, by_id: bool },
    #[error("{key}: {count} private keys match; add id= or object= to the URI to pick one")]
    SeveralObjects { key: String, count: usize },
    #[error(
        "{key}: key type {key_type} is not supported (mtlsd signs with EC P-256/P-384, RSA and Ed25519)"
    )]
    UnsupportedKey { key: String, key_type: String },
    #[error("{key}: the token does not support {mechanism}, which this {key_type} key needs")]
    MechanismUnsupported {
        key: String,
        mechanism: &'static str,
        key_type: &'static str,
    },
    #[error("{key}: the private key does not match the certificate in {cert}")]
    KeyMismatch { key: String, cert: PathBuf },
    #[error("{key}: {function} failed: {rv}")]
    Call {
        key: String,
        function: String,
        rv: String,
    },
    #[error("{key}: no answer from the token within {}", humantime::format_duration(*after))]
    Timeout { key: String, after: Duration },
    #[error("{key}: {waiting} signatures are already waiting for the token; not queueing more")]
    Busy { key: String, waiting: usize },
    #[error("{key}: the token's worker thread has stopped")]
    WorkerGone { key: String },
}

/// The key algorithm, as the token holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    EcP256,
    EcP384,
    Rsa,
    Ed25519,
}

impl KeyKind {
    fn name(self) -> &'static str {
        match self {
            Self::EcP256 => "EC P-256",
            Self::EcP384 => "EC P-384",
            Self::Rsa => "RSA",
            Self::Ed25519 => "Ed25519",
        }
    }

    fn algorithm(self) -> SignatureAlgorithm {
        match self {
            Self::EcP256 | Self::EcP384 => SignatureAlgorithm::ECDSA,
            Self::Rsa => SignatureAlgorithm::RSA,
            Self::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }

    /// The mechanism the token must have, as PKCS#11 names it.
    fn mechanism(self) -> (MechanismType, &'static str) {
        match self {
            Self::EcP256 | Self::EcP384 => (MechanismType::ECDSA, "CKM_ECDSA"),
            Self::Rsa => (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"),
            Self::Ed25519 => (MechanismType::EDDSA, "CKM_EDDSA"),
        }
    }

    /// The TLS schemes this key signs, best first.
    fn schemes(self, rsa_pkcs1: bool) -> Vec<SignatureScheme> {
        match self {
            Self::EcP256 => vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            Self::EcP384 => vec![SignatureScheme::ECDSA_NISTP384_SHA384],
            Self::Ed25519 => vec![SignatureScheme::ED25519],
            Self::Rsa => {
                let mut schemes = vec![
                    SignatureScheme::RSA_PSS_SHA256,
                    SignatureScheme::RSA_PSS_SHA384,
                    SignatureScheme::RSA_PSS_SHA512,
                ];
                if rsa_pkcs1 {
                    // TLS 1.2 peers that do not offer PSS.
                    schemes.extend([
                        SignatureScheme::RSA_PKCS1_SHA256,
                        SignatureScheme::RSA_PKCS1_SHA384,
                        SignatureScheme::RSA_PKCS1_SHA512,
                    ]);
                }
                schemes
            }
        }
    }
}

/// A token-backed key, ready to sign: what `Identity` puts in its
/// `CertifiedKey`.
#[derive(Debug)]
pub(crate) struct TokenSigningKey {
    inner: Arc<WorkerHandle>,
    info: (String, PathBuf, usize),
    /// Workers with an open session, kept by the workers.
    open: Arc<AtomicUsize>,
    kind: KeyKind,
    schemes: Vec<SignatureScheme>,
    /// The certificate's SubjectPublicKeyInfo, set once the challenge
    /// proved the token key is its private half.
    spki: Vec<u8>,
}

#[derive(Debug)]
struct WorkerHandle {
    jobs: SyncSender<Job>,
    key: String,
    timeout: Duration,
}

struct Job {
    scheme: SignatureScheme,
    message: Vec<u8>,
    reply: SyncSender<Result<Vec<u8>, TokenError>>,
}

impl TokenSigningKey {
    pub(crate) fn info(&self) -> TokenKeyInfo {
        let (key, module, sessions) = self.info.clone();
        TokenKeyInfo {
            key,
            module,
            sessions,
            sessions_open: self.open.load(Ordering::Relaxed),
        }
    }
}

/// Loads the key `spec` names and proves it signs for `leaf`.
pub(crate) fn load(
    spec: &TokenKeySpec,
    cert_path: &Path,
    leaf: &CertificateDer<'_>,
    provider: &CryptoProvider,
) -> Result<Arc<TokenSigningKey>, TokenError> {
    let key_name = spec.uri.describe();
    let pin = read_pin(&spec.pin)?;
    let sessions = spec.sessions.clamp(1, MAX_TOKEN_SESSIONS);
    let (jobs, queue) = sync_channel::<Job>(QUEUE_DEPTH);
    // One queue, many workers: whichever is free takes the next job.
    let queue = Arc::new(Mutex::new(queue));
    let open = Arc::new(AtomicUsize::new(0));
    let (ready_tx, ready_rx) = sync_channel(sessions);
    for n in 0..sessions {
        let worker_spec = spec.clone();
        let pin = pin.clone();
        let queue = Arc::clone(&queue);
        let open = Arc::clone(&open);
        let ready_tx = ready_tx.clone();
        let live = LiveWorker::start();
        let spawned = std::thread::Builder::new()
            .name(format!("mtlsd-pkcs11-{n}"))
            .spawn(move || {
                // Declared first, dropped last: after the worker's session.
                let _live = live;
                let mut worker = match Worker::open(worker_spec, pin, open) {
                    Ok(worker) => {
                        // The loader may have given up waiting; then this
                        // worker has nobody to serve.
                        if ready_tx.send(Ok((worker.kind, worker.rsa_pkcs1))).is_err() {
                            return;
                        }
                        worker
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                worker.serve(&queue);
            });
        if let Err(e) = spawned {
            return Err(TokenError::Call {
                key: key_name,
                function: "starting the token's worker threads".to_owned(),
                rv: e.to_string(),
            });
        }
    }
    drop(ready_tx);
    // Every worker must have its session: a token that allows fewer
    // sessions than asked for fails here, with the token's own reason.
    let open_bound = spec.timeout.max(MIN_OPEN_TIMEOUT);
    let deadline = Instant::now() + open_bound;
    let mut opened = None;
    for _ in 0..sessions {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = wait(|| ready_rx.recv_timeout(left)).map_err(|e| match e {
            RecvTimeoutError::Timeout => TokenError::Timeout {
                key: key_name.clone(),
                after: open_bound,
            },
            RecvTimeoutError::Disconnected => TokenError::WorkerGone {
                key: key_name.clone(),
            },
        })??;
        opened.get_or_insert(answer);
    }
    let Some((kind, rsa_pkcs1)) = opened else {
        return Err(TokenError::WorkerGone { key: key_name });
    };
    let handle = Arc::new(WorkerHandle {
        jobs,
        key: key_name.clone(),
        timeout: spec.timeout,
    });
    let schemes = kind.schemes(rsa_pkcs1);
    let mismatch = || TokenError::KeyMismatch {
        key: key_name.clone(),
        cert: cert_path.to_owned(),
    };
    // Prove the pair: a fresh challenge, signed through the token, must
    // verify under the certificate's public key.
    let scheme = schemes[0];
    let mut challenge = [0u8; 32];
    provider
        .secure_random
        .fill(&mut challenge)
        .map_err(|_| TokenError::Call {
            key: key_name.clone(),
            function: "drawing a random challenge".to_owned(),
            rv: "the crypto provider has no randomness".to_owned(),
        })?;
    let signature = handle.sign(scheme, &challenge)?;
    let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|_| mismatch())?;
    let verified = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(mapped, _)| *mapped == scheme)
        .flat_map(|(_, algorithms)| algorithms.iter())
        .any(|alg| {
            end_entity
                .verify_signature(*alg, &challenge, &signature)
                .is_ok()
        });
    if !verified {
        return Err(mismatch());
    }
    let spki = leaf_spki(leaf).ok_or_else(mismatch)?;
    Ok(Arc::new(TokenSigningKey {
        inner: handle,
        info: (key_name, spec.module.clone(), sessions),
        open,
        kind,
        schemes,
        spki,
    }))
}

fn leaf_spki(leaf: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// Runs a blocking wait without stalling the async runtime's other
/// tasks: on a multi-thread runtime worker they move to another thread
/// for the duration (mtlsd starts on one whenever its key is in a token).
fn wait<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Token worker threads not yet finished (their sessions open, or
/// closing); see [`wait_for_token_sessions_to_close`].
static LIVE_WORKERS: (Mutex<usize>, std::sync::Condvar) =
    (Mutex::new(0), std::sync::Condvar::new());

/// Counts one worker thread from before it starts until after its
/// session has closed (dropped last in the thread).
struct LiveWorker;

impl LiveWorker {
    fn start() -> Self {
        *LIVE_WORKERS
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        Self
    }
}

impl Drop for LiveWorker {
    fn drop(&mut self) {
        let mut live = LIVE_WORKERS
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live -= 1;
        LIVE_WORKERS.1.notify_all();
    }
}

/// Waits, at most `bound`, until every token worker thread has closed its
/// session, for a process about to exit once every key is dropped: the
/// token library's destructors run at exit and must not run under a
/// session being closed. Returns whether they all had.
pub fn wait_for_token_sessions_to_close(bound: Duration) -> bool {
    let live = LIVE_WORKERS
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (live, _) = LIVE_WORKERS
        .1
        .wait_timeout_while(live, bound, |live| *live > 0)
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *live == 0
}

impl WorkerHandle {
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        let (reply, answer) = sync_channel(1);
        let job = Job {
            scheme,
            message: message.to_vec(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => TokenError::Busy {
                key: self.key.clone(),
                waiting: QUEUE_DEPTH,
            },
            TrySendError::Disconnected(_) => TokenError::WorkerGone {
                key: self.key.clone(),
            },
        })?;
        wait(|| answer.recv_timeout(self.timeout)).map_err(|e| match e {
            RecvTimeoutError::Timeout => TokenError::Timeout {
                key: self.key.clone(),
                after: self.timeout,
            },
            RecvTimeoutError::Disconnected => TokenError::WorkerGone {
                key: self.key.clone(),
            },
        })?
    }
}

impl SigningKey for TokenSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self.schemes.iter().find(|s| offered.contains(s))?;
        Some(Box::new(TokenSigner {
            inner: Arc::clone(&self.inner),
            scheme: *scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.kind.algorithm()
    }
}

#[derive(Debug)]
struct TokenSigner {
    inner: Arc<WorkerHandle>,
    scheme: SignatureScheme,
}

/// A failed token signature, as the handshake's error: its message names
/// the token and object.
#[derive(Debug, thiserror::Error)]
#[error("signing with the token key failed: {0}")]
pub struct TokenSignError(pub TokenError);

impl Signer for TokenSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        self.inner.sign(self.scheme, message).map_err(|e| {
            tracing::warn!(error = %e, "token signature failed; the handshake fails");
            rustls::Error::Other(rustls::OtherError(Arc::new(TokenSignError(e))))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

fn read_pin(source: &PinSource) -> Result<AuthPin, TokenError> {
    let fail = |reason: String| TokenError::Pin {
        source_name: source.to_string(),
        reason,
    };
    let path = match source {
        PinSource::File(path) => path.clone(),
        PinSource::Credential(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => Path::new(&dir).join(name),
            None => {
                return Err(fail(format!(
                    "$CREDENTIALS_DIRECTORY is not set: mtlsd was not started by systemd with \
                     LoadCredential={name}:PATH (or use pkcs11.pin_file)"
                )));
            }
        },
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let pin = text.trim_end_matches(['\n', '\r']);
    if pin.is_empty() {
        return Err(fail(format!("{} is empty", path.display())));
    }
    Ok(AuthPin::from(pin.to_owned()))
}

/// Modules are initialised once per process and never finalised: a
/// second `C_Initialize` fails, and a `C_Finalize` would close the
/// sessions of every other key loaded from the same module.
fn module(path: &Path) -> Result<Pkcs11, TokenError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let fail = |reason: String| TokenError::Module {
        module: path.to_owned(),
        reason,
    };
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(context) = modules.get(path) {
        return Ok(context.clone());
    }
    if !path.is_file() {
        return Err(fail("no such file".to_owned()));
    }
    let context = Pkcs11::new(path).map_err(|e| fail(e.to_string()))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(format!("C_Initialize: {}", rv_name(&e)))),
    }
    modules.insert(path.to_owned(), context.clone());
    Ok(context)
}

/// The token session a worker owns.
struct Worker {
    spec: TokenKeySpec,
    pin: AuthPin,
    key_name: String,
    context: Pkcs11,
    open: Option<(Session, ObjectHandle)>,
    /// Workers of this key with an open session (what `/status` shows).
    open_count: Arc<AtomicUsize>,
    kind: KeyKind,
    rsa_pkcs1: bool,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.set_open(None);
    }
}

impl Worker {
    fn open(
        spec: TokenKeySpec,
        pin: AuthPin,
        open_count: Arc<AtomicUsize>,
    ) -> Result<Self, TokenError> {
        let context = module(&spec.module)?;
        let key_name = spec.uri.describe();
        let mut worker = Self {
            spec,
            pin,
            key_name,
            context,
            open: None,
            open_count,
            kind: KeyKind::EcP256,
            rsa_pkcs1: false,
        };
        let (session, object, slot) = worker.session()?;
        worker.kind = worker.key_kind(&session, object)?;
        // Asked one by one: listing every mechanism makes cryptoki log an
        // error for each vendor mechanism it has no name for.
        let has = |mechanism| worker.context.get_mechanism_info(slot, mechanism).is_ok();
        let (needed, needed_name) = worker.kind.mechanism();
        if !has(needed) {
            return Err(TokenError::MechanismUnsupported {
                key: worker.key_name.clone(),
                mechanism: needed_name,
                key_type: worker.kind.name(),
            });
        }
        worker.rsa_pkcs1 = worker.kind == KeyKind::Rsa && has(MechanismType::RSA_PKCS);
        worker.set_open(Some((session, object)));
        Ok(worker)
    }

    /// Replaces the worker's session, keeping the count of open ones.
    fn set_open(&mut self, open: Option<(Session, ObjectHandle)>) {
        match (self.open.is_some(), open.is_some()) {
            (false, true) => {
                self.open_count.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.open_count.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.open = open;
    }

    fn call_error(&self, function: &str, error: &CkError) -> TokenError {
        TokenError::Call {
            key: self.key_name.clone(),
            function: function.to_owned(),
            rv: rv_name(error),
        }
    }

    /// Finds the token, opens a session, logs in and finds the key.
    fn session(&self) -> Result<(Session, ObjectHandle, Slot), TokenError> {
        let uri = &self.spec.uri;
        let slots = self
            .context
            .get_slots_with_token()
            .map_err(|e| self.call_error("C_GetSlotList", &e))?;
        let mut present = Vec::new();
        let mut found = None;
        for slot in slots {
            // A token whose information cannot be read (its files gone,
            // its device unplugged) is as good as absent.
            let Ok(info) = self.context.get_token_info(slot) else {
                continue;
            };
            if !info.token_initialized() {
                continue;
            }
            let label = info.label().trim_end().to_owned();
            let matches = label == uri.token
                && uri
                    .serial
                    .as_ref()
                    .is_none_or(|s| info.serial_number().trim_end() == s)
                && uri
                    .model
                    .as_ref()
                    .is_none_or(|m| info.model().trim_end() == m)
                && uri
                    .manufacturer
                    .as_ref()
                    .is_none_or(|m| info.manufacturer_id().trim_end() == m);
            if matches && found.is_none() {
                found = Some(slot);
            }
            present.push(format!("'{label}'"));
        }
        let slot = found.ok_or_else(|| TokenError::TokenAbsent {
            token: uri.token.clone(),
            module: self.spec.module.clone(),
            present,
        })?;
        let session = self
            .context
            .open_ro_session(slot)
            .map_err(|e| self.call_error("C_OpenSession", &e))?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(TokenError::PinIncorrect {
                    token: uri.token.clone(),
                    pin: self.spec.pin.to_string(),
                });
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(TokenError::PinLocked {
                    token: uri.token.clone(),
                });
            }
            Err(e) => return Err(self.call_error("C_Login", &e)),
        }
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(object) = &uri.object {
            template.push(Attribute::Label(object.as_bytes().to_vec()));
        }
        if let Some(id) = &uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let objects = session
            .find_objects(&template)
            .map_err(|e| self.call_error("C_FindObjects", &e))?;
        match objects.as_slice() {
            [object] => Ok((session, *object, slot)),
            [] => Err(TokenError::ObjectMissing {
                key: self.key_name.clone(),
                by_id: uri.id.is_some(),
            }),
            many => Err(TokenError::SeveralObjects {
                key: self.key_name.clone(),
                count: many.len(),
            }),
        }
    }

    fn key_kind(&self, session: &Session, object: ObjectHandle) -> Result<KeyKind, TokenError> {
        let attributes = session
            .get_attributes(object, &[AttributeType::KeyType])
            .map_err(|e| self.call_error("C_GetAttributeValue", &e))?;
        let key_type = attributes.iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        });
        let unsupported = |key_type: String| TokenError::UnsupportedKey {
            key: self.key_name.clone(),
            key_type,
        };
        match key_type {
            Some(KeyType::RSA) => Ok(KeyKind::Rsa),
            Some(t @ (KeyType::EC | KeyType::EC_EDWARDS)) => {
                let params = session
                    .get_attributes(object, &[AttributeType::EcParams])
                    .map_err(|e| self.call_error("C_GetAttributeValue", &e))?
                    .into_iter()
                    .find_map(|a| match a {
                        Attribute::EcParams(p) => Some(p),
                        _ => None,
                    })
                    .unwrap_or_default();
                match (t, params.as_slice()) {
                    (KeyType::EC, P256_OID) => Ok(KeyKind::EcP256),
                    (KeyType::EC, P384_OID) => Ok(KeyKind::EcP384),
                    (KeyType::EC_EDWARDS, ED25519_OID | ED25519_NAME) => Ok(KeyKind::Ed25519),
                    (t, _) => Err(unsupported(format!("{t} on curve {}", uri::hex(&params)))),
                }
            }
            Some(t) => Err(unsupported(t.to_string())),
            None => Err(unsupported("(not readable)".to_owned())),
        }
    }

    fn serve(&mut self, queue: &Mutex<Receiver<Job>>) {
        // Ends when every handle is gone: the generation holding this key
        // was replaced and its last connection closed. The lock is held
        // only while waiting for the next job, never while signing, so the
        // other workers sign meanwhile.
        loop {
            let next = queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recv();
            let Ok(job) = next else {
                return;
            };
            let answer = self.sign(job.scheme, &job.message);
            // The handshake may have stopped waiting.
            let _ = job.reply.send(answer);
        }
    }

    fn sign(&mut self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, TokenError> {
        match self.sign_once(scheme, message) {
            Err(Retry::Reopen(error)) => {
                tracing::warn!(
                    key = %self.key_name,
                    error = %rv_name(&error),
                    "the token closed the session; reopening it and logging in again"
                );
                self.set_open(None);
                self.sign_once(scheme, message).map_err(|e| match e {
                    Retry::Reopen(e) => self.call_error("C_Sign", &e),
                    Retry::Failed(e) => e,
                })
            }
            Err(Retry::Failed(e)) => Err(e),
            Ok(signature) => Ok(signature),
        }
    }

    fn sign_once(&mut self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, Retry> {
        if self.open.is_none() {
            let (session, object, _) = self.session().map_err(Retry::Failed)?;
            self.set_open(Some((session, object)));
        }
        let Some((session, object)) = &self.open else {
            // Set just above.
            return Err(Retry::Failed(TokenError::WorkerGone {
                key: self.key_name.clone(),
            }));
        };
        let (mechanism, input) = mechanism_for(scheme, message);
        match session.sign(&mechanism, *object, &input) {
            Ok(signature) => match scheme {
                SignatureScheme::ECDSA_NISTP256_SHA256 | SignatureScheme::ECDSA_NISTP384_SHA384 => {
                    ecdsa_to_der(&signature).ok_or_else(|| {
                        Retry::Failed(TokenError::Call {
                            key: self.key_name.clone(),
                            function: "C_Sign".to_owned(),
                            rv: format!(
                                "the token returned a {}-byte ECDSA signature, not r||s",
                                signature.len()
                            ),
                        })
                    })
                }
                _ => Ok(signature),
            },
            Err(e @ CkError::Pkcs11(rv, _)) if session_lost(rv) => Err(Retry::Reopen(e)),
            Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {
                Err(Retry::Failed(TokenError::MechanismUnsupported {
                    key: self.key_name.clone(),
                    mechanism: self.kind.mechanism().1,
                    key_type: self.kind.name(),
                }))
            }
            Err(e) => Err(Retry::Failed(self.call_error("C_Sign", &e))),
        }
    }
}

enum Retry {
    /// The session is gone; reopen it and try once more.
    Reopen(CkError),
    Failed(TokenError),
}

/// Errors after which a fresh session (and login) may work.
fn session_lost(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::TokenNotPresent
            | RvError::DeviceRemoved
            | RvError::UserNotLoggedIn
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::DeviceError
    )
}

/// The PKCS#11 name of an error (`CKR_PIN_INCORRECT`), which is what token
/// documentation and `pkcs11-tool` print.
fn rv_name(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => {
            let debug = format!("{rv:?}");
            let mut name = String::from("CKR");
            for c in debug.chars() {
                if c.is_ascii_uppercase() {
                    name.push('_');
                }
                name.push(c.to_ascii_uppercase());
            }
            let function = function.to_string();
            let function = function.trim_start_matches("Function::");
            format!("{name} (from C_{function})")
        }
        other => other.to_string(),
    }
}

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PrintableString "edwards25519", which PKCS#11 3.0 also allows.
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// The mechanism for `scheme` and what to feed it: the digest for ECDSA
/// and RSA (the token signs a hash), the message itself for Ed25519.
fn mechanism_for(scheme: SignatureScheme, message: &[u8]) -> (Mechanism<'static>, Vec<u8>) {
    let pss = |hash_alg, mgf, s_len: usize| {
        Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg,
            mgf,
            s_len: (s_len as u64).into(),
        })
    };
    match scheme {
        SignatureScheme::ECDSA_NISTP384_SHA384 => {
            (Mechanism::Ecdsa, sha2::Sha384::digest(message).to_vec())
        }
        SignatureScheme::ED25519 => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            message.to_vec(),
        ),
        SignatureScheme::RSA_PSS_SHA256 => (
            pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
            sha2::Sha256::digest(message).to_vec(),
        ),
        SignatureScheme::RSA_PSS_SHA384 => (
            pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
            sha2::Sha384::digest(message).to_vec(),
        ),
        SignatureScheme::RSA_PSS_SHA512 => (
            pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
            sha2::Sha512::digest(message).to_vec(),
        ),
        SignatureScheme::RSA_PKCS1_SHA256 => (
            Mechanism::RsaPkcs,
            [SHA256_DIGEST_INFO, &sha2::Sha256::digest(message)].concat(),
        ),
        SignatureScheme::RSA_PKCS1_SHA384 => (
            Mechanism::RsaPkcs,
            [SHA384_DIGEST_INFO, &sha2::Sha384::digest(message)].concat(),
        ),
        SignatureScheme::RSA_PKCS1_SHA512 => (
            Mechanism::RsaPkcs,
            [SHA512_DIGEST_INFO, &sha2::Sha512::digest(message)].concat(),
        ),
        // ECDSA_NISTP256_SHA256, and nothing else is ever chosen: the
        // schemes offered come from `KeyKind::schemes`.
        _ => (Mechanism::Ecdsa, sha2::Sha256::digest(message).to_vec()),
    }
}

/// DER DigestInfo prefixes (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_DIGEST_INFO: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_DIGEST_INFO: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// PKCS#11 returns ECDSA signatures as r||s, each half the curve's size;
/// TLS wants `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`.
fn ecdsa_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let integer = |bytes: &[u8]| {
        let trimmed = match bytes.iter().position(|b| *b != 0) {
            Some(first) => &bytes[first..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = trimmed[0] & 0x80 != 0;
        let len = trimmed.len() + usize::from(pad);
        out.push(len as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(trimmed);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut der = vec![0x30];
    if body.len() >= 0x80 {
        der.extend([0x81, body.len() as u8]);
    } else {
        der.push(body.len() as u8);
    }
    der.extend(body);
    Some(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_become_der_with_sign_padding_and_trimmed_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r's top bit set: needs a leading zero
        raw[31] = 1;
        raw[32] = 0; // s starts with zeros: trimmed
        raw[33] = 0;
        raw[34] = 0x11;
        raw[63] = 2;
        let der = ecdsa_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 2 + 30, 0x02, 33]);
        assert_eq!(der[4], 0);
        assert_eq!(der[5], 0x80);
        let s_at = 4 + 33;
        assert_eq!(&der[s_at..s_at + 3], &[0x02, 30, 0x11]);
        assert_eq!(der.len(), 2 + 35 + 32);
        // P-384 halves of 48 bytes with their top bit set.
        let der = ecdsa_to_der(&[0xff; 96]).unwrap();
        assert_eq!(&der[..5], &[0x30, 2 * (2 + 49), 0x02, 49, 0x00]);
        // P-521 halves of 66 bytes: the body passes 127 bytes and needs
        // the long length form.
        let der = ecdsa_to_der(&[0x01; 132]).unwrap();
        assert_eq!(&der[..4], &[0x30, 0x81, 2 * (2 + 66), 0x02]);
        assert!(ecdsa_to_der(&[1, 2, 3]).is_none());
        assert!(ecdsa_to_der(&[]).is_none());
    }

    #[test]
    fn errors_are_named_as_pkcs11_names_them() {
        let error = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert!(
            rv_name(&error).starts_with("CKR_PIN_INCORRECT"),
            "{}",
            rv_name(&error)
        );
    }

    #[test]
    fn a_pin_comes_from_its_file_without_the_newline_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        assert!(read_pin(&PinSource::File(path.clone())).is_ok());
        std::fs::write(&path, "\n").unwrap();
        let err = read_pin(&PinSource::File(path.clone())).unwrap_err();
        assert!(err.to_string().starts_with("pkcs11.pin_file "), "{err}");
        assert!(err.to_string().ends_with("is empty"), "{err}");
        let missing = PinSource::File(dir.path().join("nope"));
        assert!(read_pin(&missing).unwrap_err().to_string().contains("nope"));
    }
}
