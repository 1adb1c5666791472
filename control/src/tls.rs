//! Mutual TLS between nodes and managers (rustls under tonic).
//!
//! - A manager serves with its node certificate and the root, and asks every client for a
//!   certificate chained to the root, but also admits clients without one: a joining node has
//!   none yet, and only `Ca.Join` serves such callers (every other method checks the [`TlsPeer`]).
//! - A node calls managers with its own certificate and accepts only a server whose certificate
//!   chains to the root *and* names the manager role (DNS name `swarm-manager`): a worker's
//!   certificate cannot impersonate a manager.
//! - A joining node has no root yet: it accepts the manager only if the root the manager
//!   presents has the digest in its join token ([`join_client`]); a manager of another CA is
//!   refused before any secret is sent.

use std::{
    fmt,
    future::Future as _,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::transport::{Channel, Endpoint, Uri, server::Connected};

use crate::ca::{NodeIdentity, Role, digest_of};

/// The DNS name every manager certificate carries and every node checks.
pub const MANAGER_NAME: &str = "swarm-manager";

/// The protocol (ALPN) raft's appends travel on beside gRPC on the cluster port
/// (`crate::raft::appends`).
pub const RAFT_APPENDS_ALPN: &[u8] = b"shoal-raft/1";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM document did not parse.
    #[error("reading {what}: {message}")]
    Pem {
        /// What was read.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("setting up TLS: {0}")]
    Rustls(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's credentials: its certificate and key, and the cluster's root.
#[derive(Clone)]
pub struct Credentials {
    /// The node certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The root CA certificate (PEM).
    pub ca_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no certificate".into(),
        });
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the node key",
        message: e.to_string(),
    })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "the root CA certificate")? {
        roots.add(cert).map_err(rustls_error)?;
    }
    Ok(Arc::new(roots))
}

fn rustls_error(e: impl std::error::Error + Send + Sync + 'static) -> TlsError {
    TlsError::Rustls(Box::new(e))
}

impl Credentials {
    /// The identity in the node certificate.
    pub fn identity(&self) -> Result<NodeIdentity, TlsError> {
        let cert = certs(&self.cert_pem, "the node certificate")?;
        identity_of(&cert[0]).ok_or_else(|| TlsError::Pem {
            what: "the node certificate",
            message: "it carries no swarm identity".into(),
        })
    }

    /// A node's client configuration for calling managers.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_root_certificates(roots(&self.ca_pem)?)
            .with_client_auth_cert(
                certs(&self.cert_pem, "the node certificate")?,
                key(&self.key_pem)?,
            )
            .map_err(rustls_error)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// A node's TLS identity and trust, replaced in place when its certificate is renewed or the
/// swarm's root changes: the configurations built from it ([`LiveTls::server_config`],
/// [`LiveTls::client_config`]) resolve the certificate and verify peers through it at each
/// handshake, so no listener or client is rebuilt. Sessions are never resumed (a resumed
/// session skips verification), and connections verified under an earlier trust are checked
/// again ([`LiveTls::generation`]).
pub struct LiveTls {
    state: std::sync::RwLock<Arc<TlsState>>,
    generation: std::sync::atomic::AtomicU64,
    provider: Arc<CryptoProvider>,
}

struct TlsState {
    credentials: Credentials,
    /// What a manager presents: its chain, then the roots (a joining node pins one of them).
    presented: Arc<rustls::sign::CertifiedKey>,
    /// What a client presents: its chain.
    client_key: Arc<rustls::sign::CertifiedKey>,
    client_verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTls")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl TlsState {
    fn new(credentials: &Credentials, provider: &Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let chain = certs(&credentials.cert_pem, "the node certificate")?;
        let roots = roots(&credentials.ca_pem)?;
        let mut presented = chain.clone();
        presented.extend(certs(&credentials.ca_pem, "the root CA certificate")?);
        let certified = |chain: Vec<CertificateDer<'static>>| {
            rustls::sign::CertifiedKey::from_der(chain, key(&credentials.key_pem)?, provider)
                .map(Arc::new)
                .map_err(rustls_error)
        };
        Ok(Self {
            credentials: credentials.clone(),
            presented: certified(presented)?,
            client_key: certified(chain)?,
            client_verifier: WebPkiClientVerifier::builder_with_provider(
                roots.clone(),
                provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(rustls_error)?,
            server_verifier: WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(rustls_error)?,
        })
    }
}

impl LiveTls {
    /// A live identity from `credentials`.
    pub fn new(credentials: &Credentials) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        Ok(Arc::new(Self {
            state: std::sync::RwLock::new(Arc::new(TlsState::new(credentials, &provider)?)),
            generation: std::sync::atomic::AtomicU64::new(0),
            provider,
        }))
    }

    fn current(&self) -> Arc<TlsState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the certificate, key and roots; connections verified under the old roots are
    /// checked again.
    pub fn update(&self, credentials: &Credentials) -> Result<(), TlsError> {
        let state = Arc::new(TlsState::new(credentials, &self.provider)?);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// Whether the roots trusted now are `ca_pem`.
    pub fn trusts(&self, ca_pem: &str) -> bool {
        self.current().credentials.ca_pem == ca_pem
    }

    /// The credentials in use.
    pub fn credentials(&self) -> Credentials {
        self.current().credentials.clone()
    }

    /// Bumped by every [`LiveTls::update`].
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether a client's chain (leaf first) verifies under the roots trusted now.
    pub fn accepts_client(&self, chain: &[CertificateDer<'_>]) -> bool {
        verifies(&*self.current().client_verifier, chain)
    }

    /// A manager's server configuration: clients with a certificate under the trusted roots, or
    /// none (a joining node).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_client_cert_verifier(self.clone())
            .with_cert_resolver(self.clone());
        // gRPC, and raft's appends on their own protocol.
        config.alpn_protocols = vec![b"h2".to_vec(), RAFT_APPENDS_ALPN.to_vec()];
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// A client configuration for calling managers: the node's certificate, managers checked
    /// under the trusted roots.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<ClientConfig>, TlsError> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .dangerous()
            .with_custom_certificate_verifier(self.clone())
            .with_client_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

impl rustls::server::ResolvesServerCert for LiveTls {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current().presented.clone())
    }
}

impl rustls::client::ResolvesClientCert for LiveTls {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current().client_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::danger::ClientCertVerifier for LiveTls {
    fn client_auth_mandatory(&self) -> bool {
        // Only a joining node comes without one, and only `Ca.Join` serves it.
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Every root is CN=swarm-ca: a hint would tell nothing.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.current()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .client_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .client_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().client_verifier.supported_verify_schemes()
    }
}

impl ServerCertVerifier for LiveTls {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current().server_verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .server_verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current()
            .server_verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().server_verifier.supported_verify_schemes()
    }
}

/// Whether the certificate chain `cert_pem` (leaf first) is one a node trusting `ca_pem` accepts.
pub fn chain_trusted(cert_pem: &str, ca_pem: &str) -> bool {
    let (Ok(chain), Ok(roots)) = (certs(cert_pem, "the node certificate"), roots(ca_pem)) else {
        return false;
    };
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .is_ok_and(|verifier| verifies(&*verifier, &chain))
}

/// Whether `chain` (leaf first) verifies as a client's, now.
fn verifies(
    verifier: &dyn rustls::server::danger::ClientCertVerifier,
    chain: &[CertificateDer<'_>],
) -> bool {
    chain.split_first().is_some_and(|(leaf, rest)| {
        verifier
            .verify_client_cert(leaf, rest, UnixTime::now())
            .is_ok()
    })
}

/// The swarm identity (CN node ID, OU role, O cluster ID) in a certificate.
pub fn identity_of(cert: &CertificateDer<'_>) -> Option<NodeIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    let first = |attrs: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        attrs
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    let node_id = first(&mut subject.iter_common_name())?;
    let unit = first(&mut subject.iter_organizational_unit())?;
    let cluster_id = first(&mut subject.iter_organization())?;
    let role = match unit.as_str() {
        u if u == crate::ca::unit(Role::Manager) => Role::Manager,
        u if u == crate::ca::unit(Role::Worker) => Role::Worker,
        _ => return None,
    };
    Some(NodeIdentity {
        node_id,
        role,
        cluster_id,
    })
}

/// Accepts a manager only if the root it presents has `digest` (the join token's), and its
/// certificate chains to that root and names the manager role.
#[derive(Debug)]
struct PinnedRoot {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedRoot {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(root) = intermediates
            .iter()
            .find(|c| digest_of(c.as_ref()) == self.digest)
        else {
            return Err(rustls::Error::General(
                "the manager's root CA does not match the digest in the join token".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(root.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        // During a root rotation the manager's certificate is the new root's, with the new root
        // cross-signed by the pinned one among what it presents.
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client configuration of a node joining with a token whose root digest is `digest`.
pub fn join_client(digest: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedRoot {
            digest: digest.to_owned(),
            provider,
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Opens a TLS connection to a manager at `addr` with `config`, within `timeout`.
pub async fn connect(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connect = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(MANAGER_NAME).expect("a valid DNS name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from {addr} within {}s", timeout.as_secs()),
        )),
    }
}

/// Opens a TLS connection to a manager at `addr` (a preflight that surfaces TLS errors as they
/// are, which a gRPC channel would hide behind "transport error").
pub async fn handshake(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> std::io::Result<()> {
    connect(&addr.to_string(), config, timeout).await.map(drop)
}

/// A lazy gRPC channel to a manager at `addr` over TLS with `config`.
pub fn channel(
    addr: &str,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, TlsError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(rustls_error)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    let target = addr.to_owned();
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let config = config.clone();
            let target = target.clone();
            async move { connect(&target, config, timeout).await.map(TokioIo::new) }
        })),
    )
}

/// Who called: the TCP peer and, when it presented one, the identity in its certificate.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The certificate's identity (verified against the root by rustls).
    pub identity: Option<NodeIdentity>,
}

/// How many connections the cluster API holds, and for how long it holds those without a
/// certificate. A node's own calls carry its certificate; only a joining node comes without
/// one, for one call. So connections without a certificate are few, short and idle-timed, and
/// a flood of them cannot crowd out the swarm's own (nor take the file descriptors raft
/// writes with).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections at once, with or without a certificate; past it a new one is closed at once.
    pub max_connections: usize,
    /// Connections without a certificate at once.
    pub max_anonymous: usize,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Handshakes in progress, and connections without a certificate, from one address.
    pub per_address: usize,
    /// How long a handshake may take.
    pub handshake: Duration,
    /// How long a connection without a certificate may stay silent.
    pub anonymous_idle: Duration,
    /// How long a connection without a certificate may last in all.
    pub anonymous_lifetime: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4_096,
            max_anonymous: 256,
            max_handshakes: 512,
            per_address: 16,
            handshake: Duration::from_secs(5),
            anonymous_idle: Duration::from_secs(10),
            anonymous_lifetime: Duration::from_secs(60),
        }
    }
}

impl ConnectionLimits {
    /// The defaults, with at most `descriptors` connections (what the process may open, less
    /// what it keeps in reserve for its own files).
    pub fn within(descriptors: usize) -> Self {
        let defaults = Self::default();
        Self {
            max_connections: defaults.max_connections.min(descriptors.max(64)),
            ..defaults
        }
    }
}

/// Counts a connection while it lives.
#[derive(Debug)]
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    /// Takes a place under `limit`, if one is free.
    fn take(counter: &Arc<std::sync::atomic::AtomicUsize>, limit: usize) -> Option<Self> {
        use std::sync::atomic::Ordering;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Places held per remote address (handshakes, connections without a certificate).
#[derive(Debug, Default)]
struct PerAddress {
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// A place held by one address; given back on drop.
#[derive(Debug)]
struct AddressPlace {
    table: Arc<PerAddress>,
    addr: std::net::IpAddr,
}

impl PerAddress {
    fn take(table: &Arc<PerAddress>, addr: std::net::IpAddr, limit: usize) -> Option<AddressPlace> {
        let mut held = table.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(addr).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(AddressPlace {
            table: table.clone(),
            addr,
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.addr);
            }
        }
    }
}

/// The deadlines of a connection without a certificate.
#[derive(Debug)]
struct Anonymous {
    idle: Duration,
    silent_until: Pin<Box<tokio::time::Sleep>>,
    ends: Pin<Box<tokio::time::Sleep>>,
    _place: Counted,
    _address_place: AddressPlace,
}

impl Anonymous {
    /// Places for a connection without a certificate from `addr`, under `limits`, with its
    /// deadlines starting now; none (the refusal logged) when it would be over them.
    fn take(
        open: &Arc<std::sync::atomic::AtomicUsize>,
        by_address: &Arc<PerAddress>,
        addr: SocketAddr,
        limits: &ConnectionLimits,
    ) -> Option<Self> {
        let Some(place) = Counted::take(open, limits.max_anonymous) else {
            tracing::debug!(%addr, "refusing a connection without a certificate: too many open");
            return None;
        };
        let Some(address_place) = PerAddress::take(by_address, addr.ip(), limits.per_address)
        else {
            tracing::debug!(%addr, "refusing a connection without a certificate: too many from its address");
            return None;
        };
        let now = tokio::time::Instant::now();
        Some(Anonymous {
            idle: limits.anonymous_idle,
            silent_until: Box::pin(tokio::time::sleep_until(now + limits.anonymous_idle)),
            ends: Box::pin(tokio::time::sleep_until(now + limits.anonymous_lifetime)),
            _place: place,
            _address_place: address_place,
        })
    }
}

/// A server-side TLS connection that tells tonic who is on the other end.
#[derive(Debug)]
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
    anonymous: Option<Anonymous>,
    /// The trust it was last verified under, to check its certificate again when that changes.
    trust: Option<(Arc<LiveTls>, u64)>,
    _place: Counted,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl TlsConn {
    /// Who is on the other end.
    pub fn peer(&self) -> &TlsPeer {
        &self.peer
    }

    /// The application protocol agreed in the handshake (ALPN), if any.
    pub fn protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// For a connection without a certificate: whether it has been silent or open too long.
    /// For one with a certificate: whether the swarm's trust changed (a root rotation ended)
    /// and its certificate is no longer accepted.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some((live, verified)) = &mut self.trust {
            let now = live.generation();
            if now != *verified {
                let chain = self.inner.get_ref().1.peer_certificates().unwrap_or(&[]);
                if !live.accepts_client(chain) {
                    tracing::info!(peer = %self.peer.addr, "closing a connection whose certificate is no longer trusted");
                    return true;
                }
                *verified = now;
            }
        }
        match &mut self.anonymous {
            None => false,
            Some(a) => {
                a.silent_until.as_mut().poll(cx).is_ready() || a.ends.as_mut().poll(cx).is_ready()
            }
        }
    }
}

fn expired_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the connection's time or certificate ran out",
    )
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.trust.is_some() && self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before
                    && let Some(a) = &mut self.anonymous
                {
                    let next = tokio::time::Instant::now() + a.idle;
                    a.silent_until.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(expired_error())),
            other => other,
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return Poll::Ready(Err(expired_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepts TLS connections on `listener` within `limits`; each handshake runs on its own task
/// so a slow client does not hold up the others. The accepting task (returned) ends, closing
/// the listener, when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    live: Arc<LiveTls>,
    limits: ConnectionLimits,
) -> Result<
    (
        tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>>,
        tokio::task::JoinHandle<()>,
    ),
    TlsError,
> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let config = live.server_config()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let open: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let anonymous: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(limits.max_handshakes));
    let handshaking: Arc<PerAddress> = Arc::default();
    let anonymous_by_address: Arc<PerAddress> = Arc::default();
    let accepting = tokio::spawn(async move {
        loop {
            // The listener (and its port) goes as soon as the server drops the stream.
            let accepted = tokio::select! {
                () = sender.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: let some connections end first.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the limits, a connection is closed at once (dropping it).
            let Some(place) = Counted::take(&open, limits.max_connections) else {
                tracing::debug!(%addr, "refusing a connection: the cluster API holds its maximum");
                continue;
            };
            let Ok(handshake_slot) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(%addr, "refusing a connection: too many handshakes in progress");
                continue;
            };
            let Some(handshake_place) =
                PerAddress::take(&handshaking, addr.ip(), limits.per_address)
            else {
                tracing::debug!(%addr, "refusing a connection: too many handshakes from its address");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let _ = socket2::SockRef::from(&tcp).set_keepalive(true);
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            let anonymous = anonymous.clone();
            let live = live.clone();
            let anonymous_by_address = anonymous_by_address.clone();
            tokio::spawn(async move {
                // The trust the handshake verifies under is this one or a later one: a change
                // during the handshake has the connection checked again.
                let verified = live.generation();
                let handshake = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await;
                drop((handshake_slot, handshake_place));
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(identity_of);
                let anonymous = match identity {
                    Some(_) => None,
                    None => {
                        let Some(anonymous) =
                            Anonymous::take(&anonymous, &anonymous_by_address, addr, &limits)
                        else {
                            return;
                        };
                        Some(anonymous)
                    }
                };
                let trust = identity.is_some().then_some((live, verified));
                let conn = TlsConn {
                    inner: tls,
                    peer: TlsPeer { addr, identity },
                    anonymous,
                    trust,
                    _place: place,
                };
                let _ = sender.send(Ok(conn)).await;
            });
        }
    });
    Ok((
        tokio_stream::wrappers::ReceiverStream::new(receiver),
        accepting,
    ))
}
