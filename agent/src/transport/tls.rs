//! Peer identity: each agent's ed25519 node key, the self-signed certificate
//! made from it, and mutual TLS that admits only pinned peer keys.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The TLS server name peers dial; certificates are checked by key, not name.
pub const SERVER_NAME: &str = "edgeconf-peer";
/// ALPN protocol of raft traffic.
pub const ALPN_RAFT: &[u8] = b"edgeconf-raft/1";
/// ALPN protocol of gossip traffic (datagrams, and streams for big messages).
/// Version 5: every update is signed by the member that makes it, and full
/// syncs carry those updates (postcard is not self-describing, so agents of
/// an earlier version could not read it).
pub const ALPN_GOSSIP: &[u8] = b"edgeconf-gossip/5";
/// The edge feed: a follower asks for the changes after a revision.
pub const ALPN_FEED: &[u8] = b"edgeconf-feed/2";

const KEY_FILE: &str = "node.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read node key {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error("cannot write node key {path}: {error}")]
    WriteKey { path: String, error: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

/// This agent's identity on the peer network.
pub struct NodeKey {
    key: rcgen::KeyPair,
}

impl NodeKey {
    /// Loads `<data_dir>/node.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TlsError> {
        let path = data_dir.join(KEY_FILE);
        let display = path.display().to_string();
        if path.exists() {
            let pem = std::fs::read_to_string(&path).map_err(|err| TlsError::ReadKey {
                path: display.clone(),
                reason: err.to_string(),
            })?;
            let key = rcgen::KeyPair::from_pem(&pem).map_err(|err| TlsError::ReadKey {
                path: display.clone(),
                reason: format!("{err}; delete it to make a new identity"),
            })?;
            if !key.is_compatible(&rcgen::PKCS_ED25519) {
                return Err(TlsError::ReadKey {
                    path: display,
                    reason: "not an ed25519 key".into(),
                });
            }
            return Ok(Self { key });
        }
        crate::private_files::dir(data_dir).map_err(|error| TlsError::WriteKey {
            path: display.clone(),
            error,
        })?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|err| TlsError::Setup(format!("generating a node key: {err}")))?;
        create_private_file(&path, key.serialize_pem().as_bytes()).map_err(|error| {
            TlsError::WriteKey {
                path: display,
                error,
            }
        })?;
        Ok(Self { key })
    }

    /// The raw public key.
    pub fn public_key_raw(&self) -> [u8; 32] {
        self.key
            .public_key_raw()
            .try_into()
            .expect("ed25519 public keys are 32 bytes")
    }

    /// The same key for signing feed checkpoints and images (a voter's
    /// attestation is made with the key its peers already pin).
    pub fn signing_key(&self) -> Result<ed25519_dalek::SigningKey, TlsError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        ed25519_dalek::SigningKey::from_pkcs8_der(&self.key.serialize_der())
            .map_err(|err| TlsError::Setup(format!("reading the node key for signing: {err}")))
    }

    /// The public key as written in `peer_trust.keys`: `ed25519:BASE64`.
    pub fn public_key(&self) -> String {
        format_key(self.key.public_key_raw())
    }

    fn certificate(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
        let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
            .map_err(|err| TlsError::Setup(format!("certificate parameters: {err}")))?;
        let cert = params
            .self_signed(&self.key)
            .map_err(|err| TlsError::Setup(format!("self-signing the node certificate: {err}")))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Ok((cert.der().clone(), key))
    }
}

use crate::signing::keys::create_private_file;
pub use crate::signing::keys::{format_public_key as format_key, parse_public_key as parse_key};

/// The peer keys trusted now (`[peer_trust] keys`): shared by every
/// handshake's verifier, replaced on SIGHUP (see `Transport::set_trusted`).
pub type TrustedPeers = Arc<std::sync::RwLock<BTreeSet<[u8; 32]>>>;

/// Admits peers whose certificate carries one of the pinned ed25519 keys,
/// after checking the handshake signature with that key.
#[derive(Debug)]
struct PinnedKeys {
    keys: TrustedPeers,
    provider: Arc<CryptoProvider>,
}

impl PinnedKeys {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|err| rustls::Error::General(format!("unreadable peer certificate: {err}")))?;
        let spki = parsed.public_key();
        let raw = spki.subject_public_key.data.as_ref();
        let ed25519 = spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519;
        match <[u8; 32]>::try_from(raw) {
            Ok(key)
                if ed25519
                    && self
                        .keys
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(&key) =>
            {
                Ok(())
            }
            _ => {
                let shown = if ed25519 {
                    format_key(raw)
                } else {
                    "a non-ed25519 key".into()
                };
                tracing::warn!(peer_key = %shown, "refused a peer whose key is not in peer_trust.keys");
                Err(rustls::Error::General(format!(
                    "peer key {shown} is not trusted (add it to peer_trust.keys)"
                )))
            }
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PinnedKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinnedKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
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
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// QUIC server and client configurations for mutual TLS with pinned keys.
/// The QUIC settings of the peer endpoint: one server for every protocol,
/// one client per protocol (the ALPN tells the server what a connection
/// carries).
pub struct QuicConfigs {
    pub server: quinn::ServerConfig,
    pub raft_client: quinn::ClientConfig,
    pub gossip_client: quinn::ClientConfig,
    /// Gossip with keep-alives, for connections held open.
    pub gossip_held_client: quinn::ClientConfig,
    pub feed_client: quinn::ClientConfig,
    /// The keys every configuration above admits, replaceable.
    pub trusted: TrustedPeers,
}

/// The ALPN a connection negotiated.
pub fn protocol(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}

/// The node key the peer of `connection` proved it holds (the handshake
/// already checked it is pinned).
pub fn peer_key(connection: &quinn::Connection) -> Option<[u8; 32]> {
    let certificates = connection
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificates.first()?.as_ref()).ok()?;
    <[u8; 32]>::try_from(parsed.public_key().subject_public_key.data.as_ref()).ok()
}

pub fn quic_configs(node_key: &NodeKey, trusted: &[[u8; 32]]) -> Result<QuicConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let trusted: TrustedPeers = Arc::new(std::sync::RwLock::new(trusted.iter().copied().collect()));
    let verifier = Arc::new(PinnedKeys {
        keys: trusted.clone(),
        provider: provider.clone(),
    });
    let (cert, key) = node_key.certificate()?;
    let setup = |what: &str, err: &dyn std::fmt::Display| TlsError::Setup(format!("{what}: {err}"));

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup("TLS versions", &e))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .map_err(|e| setup("server certificate", &e))?;
    server.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_GOSSIP.to_vec(), ALPN_FEED.to_vec()];
    let server = quinn::crypto::rustls::QuicServerConfig::try_from(server)
        .map_err(|e| setup("QUIC server", &e))?;

    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup("TLS versions", &e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| setup("client certificate", &e))?;
    let quic_client = |alpn: &[u8]| {
        let mut client = client.clone();
        client.alpn_protocols = vec![alpn.to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|e| setup("QUIC client", &e))
    };
    let (raft_client, gossip_client) = (quic_client(ALPN_RAFT)?, quic_client(ALPN_GOSSIP)?);
    let feed_client = quic_client(ALPN_FEED)?;

    // Connections close after 5 s without traffic. Raft connections are
    // kept up by their dialer's keep-alives; gossip connections are not,
    // so an agent holds connections only to the members it talks to
    // lately (SWIM's cost per member stays flat as the fleet grows), except
    // those a dial-out agent holds to the voters so that they can reach it.
    let transport = |keep_alive: Option<std::time::Duration>| {
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(keep_alive);
        transport.max_idle_timeout(Some(
            std::time::Duration::from_secs(5)
                .try_into()
                .expect("5 s fits"),
        ));
        Arc::new(transport)
    };
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport(None));
    let client = |crypto, keep_alive| {
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport(keep_alive));
        client
    };
    let raft_client = client(raft_client, Some(std::time::Duration::from_secs(1)));
    let gossip_held_client = client(
        quic_client(ALPN_GOSSIP)?,
        Some(std::time::Duration::from_secs(2)),
    );
    let gossip_client = client(gossip_client, None);
    // A follower's long polls keep its feed connection busy; keep-alives
    // hold it open between them.
    let feed_client = client(feed_client, Some(std::time::Duration::from_secs(2)));
    Ok(QuicConfigs {
        server,
        raft_client,
        gossip_client,
        gossip_held_client,
        feed_client,
        trusted,
    })
}
