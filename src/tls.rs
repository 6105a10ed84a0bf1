//! HTTPS and WSS on a listener, shared by `serve` and `simulate`: rustls (ring) with the
//! certificate chain and key from PEM files, HTTP/2 and HTTP/1.1 offered by ALPN on one port
//! (a browser opens at most six HTTP/1.1 connections per host, so a dashboard with more
//! `EventSource`s needs h2), websocket upgrades over HTTP/1.1.
//!
//! Connections are served by hyper-util's `auto` builder (the one `axum::serve` uses) over
//! tokio-rustls: the same stack as the plain listener with a TLS handshake in front, no extra
//! server framework. The certificate is read through a resolver that [`Tls::reload`] swaps, so
//! a SIGHUP ([`reload_on_sighup`]) picks up renewed files without dropping connections; a
//! reload that fails keeps the old certificate and says why.
//!
//! [`self_signed`] makes a throwaway CA and a server certificate for `localhost` and
//! `127.0.0.1` (`simulate --tls-self-signed DIR`, and the tests).

use crate::settings::Problems;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::RwLock;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// HTTPS and WSS on the listener (HTTP/2 offered by ALPN). Both files or neither.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, server certificate first.
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }

    pub fn check(&self, problems: &mut Problems) {
        problems.check(
            self.cert_file.is_some() == self.key_file.is_some(),
            "tls.cert_file and tls.key_file: set both, or neither",
        );
    }
}

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("the private key does not suit rustls: {0}")]
    Key(String),
    #[error("generating a certificate: {0}")]
    Generate(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads a PEM certificate chain and key into what rustls serves.
fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error(cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert_file, e))?;
    if certs.is_empty() {
        return Err(file_error(cert_file, "no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_error(key_file, e))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Serves whatever certificate was loaded last.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Short critical section, no await.
        Some(self.0.read().clone())
    }
}

/// The TLS side of a listener: its acceptor and the files to reload.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl Tls {
    /// Loads the files (failing early on a bad one) and offers h2 and HTTP/1.1 by ALPN.
    pub fn load(cert_file: impl AsRef<Path>, key_file: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert_file, key_file) = (cert_file.as_ref().to_path_buf(), key_file.as_ref().to_path_buf());
        let resolver = Arc::new(Resolver(RwLock::new(load_certified_key(&cert_file, &key_file)?)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Key(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), resolver, cert_file, key_file })
    }

    /// Reads the files again; on failure the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        *self.resolver.0.write() = key;
        Ok(())
    }
}

/// Reloads the certificate on every SIGHUP until `cancel` fires.
pub fn reload_on_sighup(tls: Tls, cancel: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(()) = hup.recv() => match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                    Err(e) => tracing::warn!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays"),
                },
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (tls, cancel);
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then lets open
/// connections finish for at most `drain`. Each request carries `ConnectInfo<SocketAddr>`, as
/// with `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    tls: Tls,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = crate::http::serve::accept(&listener) => accepted,
        };
        let acceptor = tls.acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%remote, "TLS handshake timed out"),
            };
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                router.clone().oneshot(request)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::info!("connections still open after the drain time; closing them");
    }
    Ok(())
}

/// A throwaway CA and a server certificate it signed, as PEM.
pub struct SelfSigned {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a fresh CA and a server certificate for `hosts` (DNS names or IP addresses).
pub fn self_signed(hosts: &[&str]) -> Result<SelfSigned, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let err = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "signalflow-gateway throwaway CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca = ca_params.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, hosts.first().copied().unwrap_or("localhost"));
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(err)?;
    Ok(SelfSigned { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes a fresh [`self_signed`] set for `localhost` and `127.0.0.1` into `dir` as `ca.pem`,
/// `cert.pem` and `key.pem`; returns (cert, key) paths.
pub fn write_self_signed(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    let set = self_signed(&["localhost", "127.0.0.1"])?;
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    for (path, text) in [(&ca, &set.ca_pem), (&cert, &set.cert_pem), (&key, &set.key_pem)] {
        std::fs::write(path, text).map_err(|e| file_error(path, e))?;
    }
    Ok((cert, key))
}
