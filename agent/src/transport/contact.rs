//! When this agent last reached a trusted peer, and every connection open
//! to one: a peer key struck off the trusted list loses its connections at
//! once.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use super::tls;

/// When this agent last completed a QUIC handshake with a trusted peer (in
/// either direction), in milliseconds since the Unix epoch; 0 for never.
/// A member that has never reached a peer is most often one whose
/// `[peer_trust] keys` do not match the others' node keys.
/// Also keeps every open connection, so that a peer key no longer trusted
/// loses its connections at once (see
/// [`Transport::set_trusted`](super::Transport::set_trusted)).
pub struct Contact {
    last: std::sync::atomic::AtomicU64,
    open: Mutex<Vec<quinn::Connection>>,
    /// The peer keys every handshake admits (shared with the verifiers).
    trusted: tls::TrustedPeers,
}

impl Contact {
    pub(super) fn new(trusted: tls::TrustedPeers) -> Contact {
        Contact {
            last: std::sync::atomic::AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            trusted,
        }
    }

    /// A handshake completed: `connection`. Its key was trusted when the
    /// handshake checked it; if
    /// [`Transport::set_trusted`](super::Transport::set_trusted) has struck
    /// the key off since, the connection closes here and this says false.
    /// The keys are read while `open` is held, and [`Contact::set_trusted`]
    /// changes them before it takes `open` to close connections: so either it
    /// closes this connection or this sees its keys. (Without the check, a
    /// handshake finishing while `set_trusted` ran kept its connection.)
    pub(super) fn touch(&self, connection: &quinn::Connection) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_trusted(connection) {
            connection.close(0u32.into(), b"key no longer trusted");
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last.store(now.max(1), Ordering::Relaxed);
        open.retain(|c| c.close_reason().is_none());
        open.push(connection.clone());
        true
    }

    fn is_trusted(&self, connection: &quinn::Connection) -> bool {
        let trusted = self.trusted.read().unwrap_or_else(|e| e.into_inner());
        tls::peer_key(connection).is_some_and(|key| trusted.contains(&key))
    }

    /// The last contact, or `None` if no peer was ever reached.
    pub fn last(&self) -> Option<std::time::SystemTime> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(std::time::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Trusts exactly `keys` from now on and closes the open connections
    /// of peers whose key is not among them; returns how many. The keys
    /// change before `open` is taken (see [`Contact::touch`]).
    pub(super) fn set_trusted(&self, keys: &[[u8; 32]]) -> usize {
        *self.trusted.write().unwrap_or_else(|e| e.into_inner()) = keys.iter().copied().collect();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        open.retain(|connection| {
            let kept = self.is_trusted(connection);
            if !kept {
                connection.close(0u32.into(), b"key no longer trusted");
                closed += 1;
            }
            kept && connection.close_reason().is_none()
        });
        closed
    }
}
