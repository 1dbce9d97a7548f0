//! TLS on the client API. The certificate, key and client CA are read from
//! disk again whenever one of the files changes, so certificates rotate
//! without a restart: connections made after the change use the new files,
//! connections already open keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ClientTls;

/// How long a client gets to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client API's TLS settings, reloaded when the files change.
pub struct ClientTlsFiles {
    files: ClientTls,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    config: Arc<ServerConfig>,
    /// Checks client certificates against the trusted CA, if there is one.
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientTlsFiles {
    /// Whether clients must present a certificate from the trusted CA.
    pub fn cert_auth(&self) -> bool {
        self.files.cert_auth
    }

    /// The files, as configured.
    pub fn files(&self) -> &ClientTls {
        &self.files
    }
}

impl ClientTlsFiles {
    /// Loads the files; an error names the file at fault.
    pub fn load(files: ClientTls) -> Result<Self, String> {
        let (config, clients) = build(&files)?;
        let stamps = stamps(&files);
        Ok(Self {
            files,
            loaded: Mutex::new(Loaded {
                stamps,
                config,
                clients,
            }),
        })
    }

    /// Whether `chain` (leaf first, DER) is a client certificate the
    /// trusted CA issued and that is valid now: the leader's check of a
    /// certificate a follower says its client presented.
    pub fn verifies_client(&self, chain: &[Vec<u8>]) -> bool {
        let Some(verifier) = self.reloaded().clients else {
            return false;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let intermediates: Vec<CertificateDer> = intermediates
            .iter()
            .map(|der| CertificateDer::from(der.as_slice()))
            .collect();
        verifier
            .verify_client_cert(
                &CertificateDer::from(leaf.as_slice()),
                &intermediates,
                UnixTime::now(),
            )
            .is_ok()
    }

    /// The configuration for a new connection: rebuilt first if a file
    /// changed. A change that does not load (a file half written, a key that
    /// does not match) is logged and the previous files stay in use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.reloaded().config
    }

    fn reloaded(&self) -> Loaded {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamps(&self.files);
        if now != loaded.stamps {
            match build(&self.files) {
                Ok((config, clients)) => {
                    tracing::info!(cert = %self.files.cert_file.display(), "client TLS files changed: new connections use them");
                    *loaded = Loaded {
                        stamps: now,
                        config,
                        clients,
                    };
                }
                Err(err) => {
                    tracing::warn!(error = %err, "client TLS files changed but do not load; keeping the previous ones");
                    loaded.stamps = now;
                }
            }
        }
        Loaded {
            stamps: loaded.stamps.clone(),
            config: loaded.config.clone(),
            clients: loaded.clients.clone(),
        }
    }
}

fn stamps(files: &ClientTls) -> Vec<Option<SystemTime>> {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut paths: Vec<&PathBuf> = vec![&files.cert_file, &files.key_file];
    paths.extend(files.trusted_ca_file.as_ref());
    paths.into_iter().map(|p| modified(p)).collect()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("cannot read certificates from {}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The server configuration, and the client certificate verifier in it.
type Built = (Arc<ServerConfig>, Option<Arc<dyn ClientCertVerifier>>);

fn build(files: &ClientTls) -> Result<Built, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|err| {
        format!(
            "cannot read a private key from {}: {err}",
            files.key_file.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup: {err}"))?;
    let mut clients = None;
    let builder = match &files.trusted_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots.add(cert).map_err(|err| {
                    format!("{}: not a usable CA certificate: {err}", ca_file.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if files.cert_auth {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|err| format!("{}: {err}", ca_file.display()))?;
            clients = Some(verifier.clone());
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|err| {
        format!(
            "{} and {} do not make a usable certificate and key: {err}",
            files.cert_file.display(),
            files.key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), clients))
}

/// Accepts TCP connections on `listener` and hands over those that finish a
/// TLS handshake. Handshakes run apart, so a slow or failing client never
/// holds up the others. Ends when `shutdown` turns true.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ClientTlsFiles>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<tokio::net::TcpStream>, std::io::Error>>
{
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(stream)).await;
                    }
                    Ok(Err(err)) => {
                        tracing::info!(%peer, error = %err, "client TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "client TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
