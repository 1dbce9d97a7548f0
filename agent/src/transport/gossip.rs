//! Gossip over the peer endpoint: connections negotiated with the gossip
//! ALPN carry one encoded message per QUIC datagram, or per stream when a
//! message is too big for a datagram (full syncs).
//!
//! Gossip tolerates loss, so sending never waits: a message to a peer
//! with no connection yet starts one and is sent once it is up; messages
//! queued behind a connection attempt that fails are simply lost, as UDP
//! would lose them, and the protocol's timeouts deal with it.
//!
//! Connections carry gossip both ways, whoever dialed: an agent that
//! cannot be dialed (behind NAT, `[gossip] dial_out_only`) is reached over
//! the connections it makes. An accepted connection is kept under the
//! address it came from, and under the address its sender announces
//! (see [`GossipNet::alias`]) when those differ; a dial-out agent holds its
//! connections to the voters open with keep-alives ([`GossipNet::hold`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{connect, tls, Contact};

/// Largest gossip message accepted on a stream (a full sync of a large
/// fleet: about 300 bytes per member).
const MAX_MESSAGE: usize = 32 << 20;
/// Messages held for a peer while its connection is being made.
const PENDING_PER_PEER: usize = 64;

/// Where received gossip messages go (still encoded), with the address
/// the connection they came on leads to and the node key it was made with.
pub type GossipSink = Arc<dyn Fn(Vec<u8>, SocketAddr, [u8; 32]) + Send + Sync>;

/// Sends gossip messages to peers by address.
pub struct GossipNet {
    endpoint: quinn::Endpoint,
    /// For connections that may close when idle.
    client_config: quinn::ClientConfig,
    /// For the connections [`GossipNet::hold`] keeps open.
    held_config: quinn::ClientConfig,
    peers: Mutex<HashMap<SocketAddr, Slot>>,
    /// Announced address → the address of a connection that reaches it.
    aliases: Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// Addresses whose connections are kept open.
    held: Mutex<HashSet<SocketAddr>>,
    /// Received messages go here once gossip is attached.
    sink: Arc<OnceLock<GossipSink>>,
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
        (client_config, held_config): (quinn::ClientConfig, quinn::ClientConfig),
        sink: Arc<OnceLock<GossipSink>>,
        isolated: Arc<AtomicBool>,
        runtime: tokio::runtime::Handle,
        contact: Arc<Contact>,
    ) -> Arc<GossipNet> {
        Arc::new(GossipNet {
            endpoint,
            client_config,
            held_config,
            peers: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
            sink,
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
        let live = |slot: Option<&Slot>| matches!(slot, Some(Slot::Connected(c)) if c.close_reason().is_none());
        let to = match self.lock_aliases().get(&to) {
            Some(via) if !live(peers.get(&to)) && live(peers.get(via)) => *via,
            _ => to,
        };
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
            let held = net.lock_held().contains(&to);
            let config = if held {
                &net.held_config
            } else {
                &net.client_config
            };
            let connection = connect(&net.endpoint, config, &net.contact, to).await;
            if !net.connected(to, connection.clone()) {
                return;
            }
            let Some(connection) = connection else {
                return;
            };
            // The peer answers over the same connection when it cannot
            // dial this agent.
            if let Some(sink) = net.sink.get() {
                receive(connection, sink.clone(), net.isolated.clone()).await;
            }
        });
    }

    /// Records how a dial to `to` ended; `false` if it failed.
    fn connected(&self, to: SocketAddr, connection: Option<quinn::Connection>) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        // The peer may have dialed in meanwhile (see `accepted`).
        let pending = match peers.get_mut(&to) {
            Some(Slot::Connecting(pending)) => std::mem::take(pending),
            _ => Vec::new(),
        };
        let Some(connection) = connection else {
            if matches!(peers.get(&to), Some(Slot::Connecting(_))) {
                peers.remove(&to);
            }
            return false;
        };
        for message in pending {
            transmit(connection.clone(), message);
        }
        peers.insert(to, Slot::Connected(connection));
        true
    }

    /// Keeps a connection to each of `addrs` open (dialing those with none)
    /// and lets the others close when idle: a dial-out agent calls this
    /// with the voters' addresses, so that they can always reach it.
    pub fn hold(self: &Arc<Self>, addrs: &[SocketAddr]) {
        *self.lock_held() = addrs.iter().copied().collect();
        for &addr in addrs {
            let connected = self
                .peers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&addr);
            if !connected {
                self.open(addr);
            }
        }
    }

    /// Starts a connection to `addr` without sending anything.
    fn open(self: &Arc<Self>, addr: SocketAddr) {
        // An empty stream: the receiver reads it as a message that does
        // not decode and drops it.
        self.send(addr, Vec::new());
    }

    /// Messages for `announced` go over the connection from `via`: the
    /// agent announcing `announced` cannot be dialed there (it is behind
    /// NAT) and dialed this agent from `via`. Used only while no
    /// connection to `announced` itself is up.
    pub fn alias(&self, announced: SocketAddr, via: SocketAddr) {
        if announced != via {
            self.lock_aliases().insert(announced, via);
        }
    }

    /// Registers a connection a peer made to this agent, so that replies
    /// to its address go back over it; then reads it until it closes.
    pub(super) async fn accepted(self: Arc<Self>, connection: quinn::Connection) {
        let Some(sink) = self.sink.get().cloned() else {
            return;
        };
        let remote = connection.remote_address();
        {
            let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
            let pending = match peers.get_mut(&remote) {
                Some(Slot::Connected(c)) if c.close_reason().is_none() => None,
                Some(Slot::Connecting(pending)) => Some(std::mem::take(pending)),
                _ => Some(Vec::new()),
            };
            if let Some(pending) = pending {
                for message in pending {
                    transmit(connection.clone(), message);
                }
                peers.insert(remote, Slot::Connected(connection.clone()));
            }
        }
        receive(connection, sink, self.isolated.clone()).await;
    }

    /// Forgets connections that have closed (peers that went away) and
    /// the aliases that led to them.
    pub fn prune(&self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|_, slot| match slot {
            Slot::Connected(connection) => connection.close_reason().is_none(),
            Slot::Connecting(_) => true,
        });
        self.lock_aliases().retain(|_, via| peers.contains_key(via));
    }

    fn lock_aliases(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, SocketAddr>> {
        self.aliases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
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

/// Reads gossip messages from a connection until it closes.
async fn receive(connection: quinn::Connection, sink: GossipSink, isolated: Arc<AtomicBool>) {
    let remote = connection.remote_address();
    // The handshake checked it is a trusted key.
    let Some(key) = tls::peer_key(&connection) else {
        return;
    };
    let streams = {
        let (connection, sink, isolated) = (connection.clone(), sink.clone(), isolated.clone());
        async move {
            while let Ok(mut stream) = connection.accept_uni().await {
                let (sink, isolated) = (sink.clone(), isolated.clone());
                tokio::spawn(async move {
                    match stream.read_to_end(MAX_MESSAGE).await {
                        Ok(message) if message.is_empty() => {}
                        Ok(message) if !isolated.load(Ordering::SeqCst) => {
                            sink(message, remote, key)
                        }
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
            if !datagram.is_empty() && !isolated.load(Ordering::SeqCst) {
                sink(datagram.to_vec(), remote, key);
            }
        }
    };
    tokio::join!(streams, datagrams);
}

/// Whether an accepted connection negotiated the gossip protocol.
pub(super) fn is_gossip(connection: &quinn::Connection) -> bool {
    tls::protocol(connection).is_some_and(|protocol| protocol == tls::ALPN_GOSSIP)
}
