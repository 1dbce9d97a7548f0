//! The edge feed's request/response channel on the peer endpoint: a
//! follower opens a bidirectional stream on a connection negotiated with
//! the feed ALPN, writes one request, and reads one reply.
//!
//! Followers dial out (an edge behind NAT only ever connects to others);
//! any agent answers. This module moves bounded byte frames and tells the
//! handler which pinned node key asked; what the bytes mean is the edge
//! layer's business.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use super::{connect, tls, Contact};

/// Largest request a server reads (a follower's position and prefixes).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Requests one connection may have in flight; more wait for a stream.
const STREAMS_PER_CONNECTION: u32 = 8;

/// Answers one request from the peer holding the given node key.
pub type FeedHandler = Arc<dyn Fn([u8; 32], Vec<u8>) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum FeedNetError {
    #[error("cannot reach {0}")]
    Unreachable(SocketAddr),
    #[error("{addr}: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("{0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("peer traffic is cut off (fault injection)")]
    Isolated,
}

/// A follower's side: connections to the peers it pulls from.
pub struct FeedNet {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    isolated: Arc<AtomicBool>,
    contact: Arc<Contact>,
}

impl FeedNet {
    pub(super) fn new(
        endpoint: quinn::Endpoint,
        client_config: quinn::ClientConfig,
        isolated: Arc<AtomicBool>,
        contact: Arc<Contact>,
    ) -> Arc<FeedNet> {
        Arc::new(FeedNet {
            endpoint,
            client_config,
            connections: Mutex::new(HashMap::new()),
            isolated,
            contact,
        })
    }

    /// Sends `request` to `addr` and returns its reply (at most
    /// `max_reply` bytes), within `timeout`.
    pub async fn request(
        &self,
        addr: SocketAddr,
        request: &[u8],
        max_reply: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, FeedNetError> {
        if self.isolated.load(Ordering::SeqCst) {
            return Err(FeedNetError::Isolated);
        }
        let connection = self.connection(addr).await?;
        let exchange = async {
            let (mut send, mut receive) = connection.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all(request).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            receive
                .read_to_end(max_reply)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(reason)) => {
                self.forget(addr);
                Err(FeedNetError::Stream { addr, reason })
            }
            Err(_) => Err(FeedNetError::Timeout(addr)),
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, FeedNetError> {
        let cached = self.lock().get(&addr).cloned();
        if let Some(connection) = cached.filter(|c| c.close_reason().is_none()) {
            return Ok(connection);
        }
        let connection = connect(&self.endpoint, &self.client_config, &self.contact, addr)
            .await
            .ok_or(FeedNetError::Unreachable(addr))?;
        self.lock().insert(addr, connection.clone());
        Ok(connection)
    }

    /// Drops the connection to `addr` (a peer that failed or lied).
    pub fn forget(&self, addr: SocketAddr) {
        if let Some(connection) = self.lock().remove(&addr) {
            connection.close(0u32.into(), b"dropped");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, quinn::Connection>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A server's side: answers the requests on an accepted feed connection
/// until it closes, a few at a time.
pub(super) async fn serve(
    connection: quinn::Connection,
    handler: FeedHandler,
    isolated: Arc<AtomicBool>,
) {
    let Some(peer) = tls::peer_key(&connection) else {
        return;
    };
    connection.set_max_concurrent_bi_streams(STREAMS_PER_CONNECTION.into());
    while let Ok((mut send, mut receive)) = connection.accept_bi().await {
        let handler = handler.clone();
        let isolated = isolated.clone();
        tokio::spawn(async move {
            let Ok(request) = receive.read_to_end(MAX_REQUEST).await else {
                let _ = send.reset(1u32.into());
                return;
            };
            if isolated.load(Ordering::SeqCst) {
                return;
            }
            let reply = handler(peer, request).await;
            if send.write_all(&reply).await.is_ok() {
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        });
    }
}
