//! Peer transport: one QUIC endpoint per agent, mutual TLS with pinned node
//! keys, raft messages batched per peer.
//!
//! Every peer has its own sender task and bounded queue: a slow or dead peer
//! fills only its own queue (further messages to it are dropped and raft is
//! told it is unreachable; raft retransmits), never stalling the others.
//! The transport knows nothing of raft's logic, only how to move messages.

mod contact;
pub mod feed;
pub mod frames;
pub mod gossip;
pub mod limits;
pub mod senders;
pub mod snapshot_stream;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;

pub use contact::Contact;
pub use feed::{FeedHandler, FeedNet, FeedNetError};
pub use gossip::{GossipNet, GossipSink};
pub use senders::Senders;
pub use snapshot_stream::{SnapshotDir, SnapshotRef};
pub use tls::NodeKey;

/// Messages queued per peer before further ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Most messages taken from a peer's queue and written at once.
const MAX_BATCH: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Raft streams one member may have open to us at once: its long-lived
/// message stream (a new one after an error) and snapshot streams.
const RAFT_STREAMS_PER_CONNECTION: u32 = 16;
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the transport tells the consensus layer.
#[derive(Debug)]
pub enum Delivery {
    /// A message from a peer.
    Message(Message),
    /// Messages to this peer could not be delivered.
    Unreachable(u64),
    /// A snapshot to this peer was sent (`true`) or failed.
    SnapshotSent { to: u64, ok: bool },
}

pub type Sink = Arc<dyn Fn(Delivery) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen for peers on {addr}: {error} (is another agent running there? change listen_peer_urls)")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    peers: Mutex<HashMap<u64, Peer>>,
    /// Where messages go; raft's is set once consensus starts (messages
    /// that arrive before are dropped, and raft sends them again).
    sinks: Sinks,
    gossip: Arc<GossipNet>,
    feed: Arc<FeedNet>,
    /// Sender tasks are started from the raft thread, outside the runtime.
    runtime: tokio::runtime::Handle,
    /// Fault injection: while set, every peer message in or out is dropped,
    /// as if this member were cut off by a network partition.
    isolated: Arc<AtomicBool>,
    /// Fault injection: while set, raft messages this member sends are
    /// dropped, but it still hears its peers (an asymmetric partition).
    muted: AtomicBool,
    /// Fault injection: while set, this member's acknowledgements of
    /// appends (`MsgAppendResp`) are dropped: its leader never learns what
    /// it stored, though everything else it says gets through.
    acks_dropped: AtomicBool,
    /// When a peer last completed a handshake with us, either way.
    contact: Arc<Contact>,
    /// Which node key speaks for which member (see `senders`).
    senders: Arc<Senders>,
}

/// A peer's two senders, each with its own queue and connection: one for
/// the messages raft takes in any order and that keep its leadership and
/// elections apart from replication ([`is_urgent`]: heartbeats, votes,
/// read rounds), one for the rest, in order. A heartbeat never waits
/// behind megabytes of appends, in a queue, on a stream, or in a
/// congestion window (etcd too keeps its appends on a stream apart).
struct Peer {
    addr: SocketAddr,
    queue: mpsc::Sender<Message>,
    urgent: mpsc::Sender<Message>,
}

/// Sets a fault switch that drops `what`, and logs when it changes.
fn flip_fault(switch: &AtomicBool, dropped: bool, what: &str) {
    if switch.swap(dropped, Ordering::SeqCst) != dropped {
        tracing::warn!(
            "fault injection: {what} {}",
            if dropped { "dropped" } else { "restored" }
        );
    }
}

/// Messages raft accepts in any order relative to the others: none of them
/// carries entries, and a late or lost one is sent again (`MsgBeat` marks
/// the leader's notice that its log is durable, `consensus::leader_persisted`;
/// a lost one only leaves its follower to hear of the commit as before).
fn is_urgent(message: &Message) -> bool {
    matches!(
        message.get_msg_type(),
        MessageType::MsgBeat
            | MessageType::MsgHeartbeat
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgReadIndex
            | MessageType::MsgReadIndexResp
    )
}

impl Transport {
    /// Binds the peer endpoint and starts accepting peers: raft messages
    /// go to the sink given to [`Transport::attach_raft`], gossip to the one
    /// given to [`Transport::attach_gossip`]. Call from within the runtime.
    /// With `dial_out_only`, peers' connections are ignored, as a NAT
    /// would drop them: the agent talks only over connections it makes.
    pub fn start(
        listen: SocketAddr,
        node_key: &NodeKey,
        trusted: &[[u8; 32]],
        dial_out_only: bool,
    ) -> Result<Arc<Transport>, TransportError> {
        let configs = tls::quic_configs(node_key, trusted)?;
        let endpoint = quinn::Endpoint::server(configs.server, listen).map_err(|error| {
            TransportError::Bind {
                addr: listen,
                error,
            }
        })?;
        let isolated = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let sinks = Sinks::default();
        let contact = Arc::new(Contact::new(configs.trusted.clone()));
        let senders = Arc::new(Senders::default());
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            client_config: configs.raft_client,
            peers: Mutex::new(HashMap::new()),
            sinks: sinks.clone(),
            gossip: GossipNet::new(
                endpoint.clone(),
                (configs.gossip_client, configs.gossip_held_client),
                sinks.gossip.clone(),
                isolated.clone(),
                runtime.clone(),
                contact.clone(),
            ),
            feed: FeedNet::new(
                endpoint.clone(),
                configs.feed_client,
                isolated.clone(),
                contact.clone(),
            ),
            runtime,
            isolated: isolated.clone(),
            muted: AtomicBool::new(false),
            acks_dropped: AtomicBool::new(false),
            contact: contact.clone(),
            senders: senders.clone(),
        });
        tokio::spawn(accept_peers(
            endpoint,
            sinks,
            transport.gossip.clone(),
            (isolated, contact, senders),
            dial_out_only,
        ));
        Ok(transport)
    }

    /// Starts delivering raft messages to `sink`; snapshot copies are
    /// sent from and received into `snapshots`.
    pub fn attach_raft(&self, sink: Sink, snapshots: Arc<SnapshotDir>) {
        let _ = self.sinks.snapshots.set(snapshots);
        let _ = self.sinks.raft.set(sink);
    }

    /// Starts delivering gossip messages to `sink`.
    pub fn attach_gossip(&self, sink: GossipSink) {
        let _ = self.sinks.gossip.set(sink);
    }

    /// Sends gossip messages.
    pub fn gossip(&self) -> &Arc<GossipNet> {
        &self.gossip
    }

    /// Starts answering feed requests with `handler`.
    pub fn attach_feed(&self, handler: FeedHandler) {
        let _ = self.sinks.feed.set(handler);
    }

    /// Asks peers for feed batches.
    pub fn feed(&self) -> &Arc<FeedNet> {
        &self.feed
    }

    /// Which key speaks for which member, and what was refused.
    pub fn senders(&self) -> &Senders {
        &self.senders
    }

    /// When a peer was last reached (see [`Contact`]).
    pub fn contact(&self) -> &Contact {
        &self.contact
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    fn deliver(&self, delivery: Delivery) {
        if let Some(sink) = self.sinks.raft.get() {
            sink(delivery);
        }
    }

    /// Sets who the peers are; senders start or stop to match.
    pub fn set_peers(&self, wanted: &[(u64, SocketAddr)]) {
        self.senders.set_members(wanted.iter().map(|(id, _)| *id));
        let (Some(sink), Some(snapshots)) = (self.sinks.raft.get(), self.sinks.snapshots.get())
        else {
            return;
        };
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|id, peer| wanted.contains(&(*id, peer.addr)));
        for &(id, addr) in wanted {
            peers.entry(id).or_insert_with(|| {
                let sender = || {
                    let (queue, outbox) = mpsc::channel(PEER_QUEUE);
                    self.runtime.spawn(send_to_peer(
                        self.endpoint.clone(),
                        self.client_config.clone(),
                        (
                            self.contact.clone(),
                            self.senders.clone(),
                            snapshots.clone(),
                        ),
                        (id, addr),
                        outbox,
                        sink.clone(),
                    ));
                    queue
                };
                Peer {
                    addr,
                    queue: sender(),
                    urgent: sender(),
                }
            });
        }
    }

    /// Cuts this member off from its peers (or reconnects it): a fault
    /// injection for partition tests, see `crate::fault`.
    pub fn set_isolated(&self, isolated: bool) {
        flip_fault(&self.isolated, isolated, "peer traffic");
    }

    /// Drops the raft messages this member sends (or sends them again):
    /// a fault injection for asymmetric partitions, see `crate::fault`.
    pub fn set_muted(&self, muted: bool) {
        flip_fault(&self.muted, muted, "outgoing raft messages");
    }

    /// Drops this member's acknowledgements of appends (or sends them
    /// again): a fault injection, see `crate::fault`.
    pub fn set_acks_dropped(&self, dropped: bool) {
        flip_fault(&self.acks_dropped, dropped, "acknowledgements of appends");
    }

    /// Trusts exactly `keys` from now on (`[peer_trust] keys`, on SIGHUP):
    /// new handshakes check them, and open connections of keys no longer
    /// listed close at once. Returns how many closed.
    pub fn set_trusted(&self, keys: &[[u8; 32]]) -> usize {
        self.contact.set_trusted(keys)
    }

    /// Queues messages for their peers without waiting.
    pub fn send(&self, messages: Vec<Message>) {
        let isolated = self.isolated.load(Ordering::SeqCst) || self.muted.load(Ordering::SeqCst);
        let acks_dropped = self.acks_dropped.load(Ordering::SeqCst);
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        for message in messages {
            let to = message.to;
            let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
            if acks_dropped && message.get_msg_type() == MessageType::MsgAppendResponse {
                continue;
            }
            let queued = !isolated
                && peers.get(&to).is_some_and(|peer| {
                    let queue = if is_urgent(&message) {
                        &peer.urgent
                    } else {
                        &peer.queue
                    };
                    queue.try_send(message).is_ok()
                });
            if !queued {
                self.deliver(Delivery::Unreachable(to));
                // raft keeps a follower paused while a snapshot to it is in
                // flight: say this one failed, or it waits forever.
                if snapshot {
                    self.deliver(Delivery::SnapshotSent { to, ok: false });
                }
            }
        }
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}

/// Where accepted connections deliver, per protocol.
#[derive(Default, Clone)]
struct Sinks {
    raft: Arc<OnceLock<Sink>>,
    snapshots: Arc<OnceLock<Arc<SnapshotDir>>>,
    gossip: Arc<OnceLock<GossipSink>>,
    feed: Arc<OnceLock<FeedHandler>>,
}

async fn accept_peers(
    endpoint: quinn::Endpoint,
    sinks: Sinks,
    gossip: Arc<GossipNet>,
    (isolated, contact, senders): (Arc<AtomicBool>, Arc<Contact>, Arc<Senders>),
    dial_out_only: bool,
) {
    let limits = Arc::new(limits::PerKey::default());
    let read_limits = Arc::new(frames::ReadLimits::default());
    while let Some(incoming) = endpoint.accept().await {
        if dial_out_only {
            incoming.ignore();
            continue;
        }
        let gossip = gossip.clone();
        let sinks = sinks.clone();
        let isolated = isolated.clone();
        let contact = contact.clone();
        let senders = senders.clone();
        let (limits, read_limits) = (limits.clone(), read_limits.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::warn!(%remote, error = %err, "refused a peer connection");
                    return;
                }
            };
            // The handshake checked the key is trusted.
            let Some(key) = tls::peer_key(&connection) else {
                return;
            };
            // Held while the connection is served (every branch below
            // returns only once it has closed).
            let Some(_place) = limits.take(key) else {
                tracing::warn!(%remote, limit = limits::CONNECTIONS_PER_KEY, "refused a peer connection: its key has the most connections open a peer may have");
                connection.close(0u32.into(), b"too many connections");
                return;
            };
            if !contact.touch(&connection) {
                return;
            }
            if tls::protocol(&connection).is_some_and(|p| p == tls::ALPN_FEED) {
                if let Some(handler) = sinks.feed.get() {
                    feed::serve(connection, handler.clone(), isolated).await;
                }
                return;
            }
            if gossip::is_gossip(&connection) {
                gossip.accepted(connection).await;
                return;
            }
            // Which member the key may speak for is `senders`' to say.
            if !senders.admits(&key) {
                tracing::warn!(%remote, key = %crate::signing::keys::format_public_key(&key), "refused a raft connection from a key that speaks for no member (an edge, or a stranger with a trusted key; or a key not in [peer_trust] voters)");
                connection.close(0u32.into(), b"not a raft member");
                return;
            }
            // A member keeps one stream for its messages and opens one per
            // snapshot; more in parallel would only buffer.
            connection.set_max_concurrent_uni_streams(RAFT_STREAMS_PER_CONNECTION.into());
            let warned = Arc::new(Mutex::new(std::collections::HashSet::new()));
            while let Ok(mut stream) = connection.accept_uni().await {
                let (sinks, isolated) = (sinks.clone(), isolated.clone());
                let (senders, warned) = (senders.clone(), warned.clone());
                let limits = read_limits.clone();
                tokio::spawn(async move {
                    let (Some(sink), Some(snapshots)) = (sinks.raft.get(), sinks.snapshots.get())
                    else {
                        return;
                    };
                    let screen = |message: &Message| {
                        if isolated.load(Ordering::SeqCst) {
                            return false;
                        }
                        match senders.check(message.from, &key) {
                            Ok(()) => true,
                            Err(refusal) => {
                                let first = warned
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .insert((refusal, message.from));
                                refused(&remote, &key, message.from, refusal, first);
                                false
                            }
                        }
                    };
                    let deliver = |message: Message| {
                        if message.get_msg_type() == MessageType::MsgSnapshot {
                            tracing::info!(%remote, from = format_args!("{:x}", message.from), "received a snapshot copy, verified");
                        }
                        sink(Delivery::Message(message))
                    };
                    let read = frames::read(&mut stream, &limits, snapshots, screen, deliver).await;
                    match read {
                        Err(frames::FrameError::Read(err)) => {
                            tracing::debug!(%remote, error = %err, "a raft stream failed")
                        }
                        Err(err) => {
                            if let Some(label) = err.label() {
                                senders.count(label);
                            }
                            tracing::warn!(%remote, key = %crate::signing::keys::format_public_key(&key), error = %err, "dropped a raft frame");
                            let _ = stream.stop(0u32.into());
                        }
                        Ok(()) => {}
                    }
                });
            }
        });
    }
}

/// Logs a refused raft message (once per connection, sender and reason;
/// every one is counted).
fn refused(remote: &SocketAddr, key: &[u8; 32], from: u64, refusal: senders::Refusal, first: bool) {
    if !first {
        return;
    }
    let key = crate::signing::keys::format_public_key(key);
    match refusal {
        senders::Refusal::NotAMember => {
            tracing::warn!(%remote, %key, from = format_args!("{from:x}"), "refused raft messages from a peer that is not a raft member (an edge, or a stranger with a trusted key)")
        }
        senders::Refusal::Unverified => {
            tracing::info!(%remote, %key, from = format_args!("{from:x}"), "dropped raft messages from a member not dialed yet (they pass once it is)")
        }
        senders::Refusal::NotAVoterKey => {
            tracing::warn!(%remote, %key, from = format_args!("{from:x}"), "refused raft messages from a key not in [peer_trust] voters")
        }
        senders::Refusal::Impersonation => {
            tracing::warn!(%remote, %key, from = format_args!("{from:x}"), "refused raft messages claiming to be a member whose node key is another (an impersonation, or a member rebuilt with a new key: that passes once this agent dials it again)")
        }
    }
}

async fn send_to_peer(
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    (contact, senders, snapshot_dir): (Arc<Contact>, Arc<Senders>, Arc<SnapshotDir>),
    (id, addr): (u64, SocketAddr),
    mut outbox: mpsc::Receiver<Message>,
    sink: Sink,
) {
    let dial = || async {
        let connection = connect(&endpoint, &config, &contact, addr).await?;
        // Whoever answers at the member's address with a trusted key is
        // the member: its messages are accepted from that key alone.
        if let Some(key) = tls::peer_key(&connection) {
            senders.bind(id, key);
        }
        Some(connection)
    };
    // Dialed at once, so the binding is known before raft needs it.
    let mut connection: Option<quinn::Connection> = dial().await;
    // Messages other than snapshots go on one long-lived stream per
    // connection, in order: no stream setup per batch.
    let mut stream: Option<quinn::SendStream> = None;
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = outbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match outbox.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let (snapshots, messages): (Vec<Message>, Vec<Message>) = batch
            .into_iter()
            .partition(|m| m.get_msg_type() == MessageType::MsgSnapshot);

        if connection
            .as_ref()
            .is_none_or(|c| c.close_reason().is_some())
        {
            connection = dial().await;
            stream = None;
            if connection.is_none() {
                tracing::debug!(peer = format_args!("{id:x}"), %addr, "peer unreachable");
                sink(Delivery::Unreachable(id));
                for _ in &snapshots {
                    sink(Delivery::SnapshotSent { to: id, ok: false });
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            backoff = Duration::from_millis(50);
        }
        let Some(conn) = connection.as_ref() else {
            continue;
        };
        if !messages.is_empty() {
            if let Err(err) = send_messages(conn, &mut stream, messages).await {
                tracing::debug!(peer = format_args!("{id:x}"), error = %err, "sending raft messages failed");
                stream = None;
                connection = None;
                sink(Delivery::Unreachable(id));
            }
        }
        for snapshot in snapshots {
            let ok = match connection.as_ref() {
                Some(conn) => match send_snapshot(conn, &snapshot_dir, &snapshot).await {
                    Ok(()) => true,
                    Err(err) => {
                        tracing::warn!(peer = format_args!("{id:x}"), error = %err, "sending a snapshot failed (raft sends another)");
                        false
                    }
                },
                None => false,
            };
            sink(Delivery::SnapshotSent { to: id, ok });
        }
    }
}

async fn connect(
    endpoint: &quinn::Endpoint,
    config: &quinn::ClientConfig,
    contact: &Contact,
    addr: SocketAddr,
) -> Option<quinn::Connection> {
    let connecting = endpoint
        .connect_with(config.clone(), addr, tls::SERVER_NAME)
        .ok()?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => contact.touch(&connection).then_some(connection),
        Ok(Err(err)) => {
            tracing::debug!(%addr, error = %err, "connecting to peer failed");
            None
        }
        Err(_) => None,
    }
}

/// Sends `messages` on the connection's long-lived raft stream (opened
/// on first use).
async fn send_messages(
    connection: &quinn::Connection,
    stream: &mut Option<quinn::SendStream>,
    messages: Vec<Message>,
) -> Result<(), String> {
    let open = match stream {
        Some(open) => open,
        None => stream.insert(connection.open_uni().await.map_err(|e| e.to_string())?),
    };
    let bytes: usize = messages
        .iter()
        .map(|m| m.entries.iter().map(|e| e.data.len()).sum::<usize>())
        .sum();
    let frames = if bytes < frames::OFF_THREAD_BYTES {
        frames::encode(&messages)
    } else {
        tokio::task::spawn_blocking(move || frames::encode(&messages))
            .await
            .map_err(|e| e.to_string())?
    };
    for frame in frames {
        open.write_all(&frame).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Sends a snapshot message on a stream of its own, its copy after it.
async fn send_snapshot(
    connection: &quinn::Connection,
    snapshots: &SnapshotDir,
    snapshot: &Message,
) -> Result<(), String> {
    let reference = SnapshotRef::decode(&snapshot.get_snapshot().data)
        .ok_or("the snapshot carries no reference to a copy")?;
    let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
    for frame in frames::encode(std::slice::from_ref(snapshot)) {
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    }
    snapshot_stream::send(&mut stream, snapshots, &reference).await?;
    stream.finish().map_err(|e| e.to_string())?;
    // Sent once the peer has read all of it (a peer that refused it stops
    // the stream with an error).
    match stream.stopped().await {
        Ok(None) => Ok(()),
        Ok(Some(code)) => Err(format!("the peer refused the snapshot ({code})")),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests;
