//! TLS for the gRPC listeners (rustls): certificate and key from PEM files, reloaded
//! when the files change, so a rotated certificate is served without a restart; with
//! a client CA, callers must present a certificate it signed (mTLS).
//!
//! Handshakes run in tasks of their own: a slow or silent client cannot hold up
//! accepting the next connection.

use std::{
    io,
    path::{Path, PathBuf},
    sync::{Arc, RwLock, Weak},
    time::{Duration, SystemTime},
};

use futures::Stream;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// The longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or holds no usable PEM.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate.
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// rustls refused the certificate, key or CA.
    #[error("TLS setup refused")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify certificates.
    #[error("client CA refused")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// Where a listener's certificate, key and (for mTLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign acceptable client certificates; `None`: no
    /// client certificates asked.
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS: accepts handshakes with the current certificate.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    // Kept for the reload task, which ends when the last `ServerTls` is gone.
    _resolver: Arc<Reloading>,
}

impl ServerTls {
    /// Loads `files` and starts watching them for changes.
    pub fn load(files: &Files) -> Result<Self, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Reloading {
            current: RwLock::new(load_key(files, &provider)?),
            stamp: RwLock::new(stamp(files)),
            files: files.clone(),
            provider: provider.clone(),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        // h2 for gRPC, http/1.1 for grpc-web from browsers.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(watch(Arc::downgrade(&resolver)));
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            _resolver: resolver,
        })
    }

    /// Accepted connections, each past its handshake (failed handshakes are logged
    /// and dropped), Nagle off as in [`crate::serve::incoming`].
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> + use<> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    // The server stopped taking connections.
                    _ = tx.closed() => return,
                    c = listener.accept() => c,
                };
                let (conn, peer) = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed");
                        continue;
                    }
                };
                let _ = conn.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self._resolver.files)
            .finish_non_exhaustive()
    }
}

/// The certificate in force, swapped when the files change.
#[derive(Debug)]
struct Reloading {
    files: Files,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Stamp>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}

/// What the files looked like when last loaded: (modified, length) of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &Files) -> Stamp {
    [&files.cert, &files.key]
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Checks the files every [`RELOAD_CHECK`]; loads them when they changed. A pair that
/// does not load (written half-way, or a key that does not match) keeps the old one
/// in force and is tried again at the next change.
async fn watch(resolver: Weak<Reloading>) {
    loop {
        tokio::time::sleep(RELOAD_CHECK).await;
        let Some(r) = resolver.upgrade() else { return };
        let now = stamp(&r.files);
        if *r.stamp.read().expect("not poisoned") == now {
            continue;
        }
        *r.stamp.write().expect("not poisoned") = now;
        match load_key(&r.files, &r.provider) {
            Ok(key) => {
                *r.current.write().expect("not poisoned") = key;
                tracing::info!(cert = %r.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(
                cert = %r.files.cert.display(),
                error = %crate::telemetry::chain(&e),
                "TLS certificate changed but does not load; serving the previous one"
            ),
        }
    }
}

fn load_key(files: &Files, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let chain = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| Error::Read {
        path: files.key.clone(),
        source,
    })?;
    let key = CertifiedKey::from_der(chain, key, provider)?;
    Ok(Arc::new(key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let read = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}
