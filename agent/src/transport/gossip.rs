//! Gossip over the peer endpoint: connections negotiated with the gossip
//! ALPN carry one encoded message per QUIC datagram, or per stream when a
//! message is too big for a datagram (full syncs).
//!
//! Gossip tolerates loss, so sending never waits: a message to a peer
//! with no connection yet starts one and is sent once it is up; messages
//! queued behind a connection attempt that fails are simply lost, as UDP
//! would lose them, and the protocol's timeouts deal with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{connect, tls, Contact};

/// Largest gossip message accepted on a stream (a full sync of a large
/// fleet: about 300 bytes per member).
const MAX_MESSAGE: usize = 32 << 20;
/// Messages held for a peer while its connection is being made.
const PENDING_PER_PEER: usize = 64;

/// Where received gossip messages go (still encoded).
pub type GossipSink = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// Sends gossip messages to peers by address.
pub struct GossipNet {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    peers: Mutex<HashMap<SocketAddr, Slot>>,
    isolated: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
    contact: Arc<Contact>,
}

enum Slot {
    Connected(quinn::Connection),
    /// A connection is being made; these wait for it.
    Connecting(Vec<Vec<u8>>),
}

impl GossipNet {
    pub(super) fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        isolated: Arc<AtomicBool>,
        runtime: tokio::runtime::Handle,
        contact: Arc<Contact>,
    ) -> Arc<GossipNet> {
        Arc::new(GossipNet {
            endpoint,
            client_config,
            peers: Mutex::new(HashMap::new()),
            isolated,
            runtime,
            contact,
        })
    }

    /// Sends one encoded message to `to` without waiting.
    pub fn send(self: &Arc<Self>, to: SocketAddr, message: Vec<u8>) {
        if self.isolated.load(Ordering::SeqCst) {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get_mut(&to) {
            Some(Slot::Connected(connection)) if connection.close_reason().is_none() => {
                transmit(connection.clone(), message);
                return;
            }
            Some(Slot::Connecting(pending)) => {
                if pending.len() < PENDING_PER_PEER {
                    pending.push(message);
                }
                return;
            }
            _ => {}
        }
        peers.insert(to, Slot::Connecting(vec![message]));
        let net = self.clone();
        self.runtime.spawn(async move {
            let connection = connect(&net.endpoint, &net.client_config, &net.contact, to).await;
            let mut peers = net.peers.lock().unwrap_or_else(|e| e.into_inner());
            let pending = match peers.remove(&to) {
                Some(Slot::Connecting(pending)) => pending,
                _ => Vec::new(),
            };
            if let Some(connection) = connection {
                for message in pending {
                    transmit(connection.clone(), message);
                }
                peers.insert(to, Slot::Connected(connection));
            }
        });
    }

    /// Forgets connections that have closed (peers that went away).
    pub fn prune(&self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|_, slot| match slot {
            Slot::Connected(connection) => connection.close_reason().is_none(),
            Slot::Connecting(_) => true,
        });
    }
}

/// A datagram when the message fits in one, else a stream of its own.
fn transmit(connection: quinn::Connection, message: Vec<u8>) {
    let fits = connection
        .max_datagram_size()
        .is_some_and(|max| message.len() <= max);
    if fits && connection.send_datagram(message.clone().into()).is_ok() {
        return;
    }
    tokio::spawn(async move {
        if let Ok(mut stream) = connection.open_uni().await {
            if stream.write_all(&message).await.is_ok() {
                let _ = stream.finish();
            }
        }
    });
}

/// Reads gossip messages from an accepted connection until it closes.
pub(super) async fn receive(
    connection: quinn::Connection,
    sink: GossipSink,
    isolated: Arc<AtomicBool>,
) {
    let streams = {
        let (connection, sink, isolated) = (connection.clone(), sink.clone(), isolated.clone());
        async move {
            while let Ok(mut stream) = connection.accept_uni().await {
                let (sink, isolated) = (sink.clone(), isolated.clone());
                tokio::spawn(async move {
                    match stream.read_to_end(MAX_MESSAGE).await {
                        Ok(message) if !isolated.load(Ordering::SeqCst) => sink(message),
                        Ok(_) => {}
                        Err(quinn::ReadToEndError::TooLong) => tracing::warn!(
                            limit = MAX_MESSAGE,
                            "dropped a gossip message over the size limit"
                        ),
                        Err(err) => tracing::debug!(error = %err, "gossip stream failed"),
                    }
                });
            }
        }
    };
    let datagrams = async move {
        while let Ok(datagram) = connection.read_datagram().await {
            if !isolated.load(Ordering::SeqCst) {
                sink(datagram.to_vec());
            }
        }
    };
    tokio::join!(streams, datagrams);
}

/// Whether an accepted connection negotiated the gossip protocol.
pub(super) fn is_gossip(connection: &quinn::Connection) -> bool {
    tls::protocol(connection).is_some_and(|protocol| protocol == tls::ALPN_GOSSIP)
}
