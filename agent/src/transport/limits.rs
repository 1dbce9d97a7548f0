//! How many connections one peer key may hold open to this agent at once.
//!
//! Every peer with a trusted key (any edge) may connect; each connection
//! costs memory for its streams. A peer keeps a handful open (raft, gossip
//! both ways, feed, and for a while the ones a restart left behind); one
//! that opens more is refused at the handshake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connections one key may have open to this agent at once.
pub const CONNECTIONS_PER_KEY: usize = 256;

#[derive(Default)]
pub struct PerKey {
    open: Mutex<HashMap<[u8; 32], usize>>,
}

/// One open connection of a key; dropping it frees the place.
pub struct Place {
    limits: Arc<PerKey>,
    key: [u8; 32],
}

impl PerKey {
    /// A place for one more connection of `key`, or `None` at the limit.
    pub fn take(self: &Arc<Self>, key: [u8; 32]) -> Option<Place> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(key).or_default();
        if *count >= CONNECTIONS_PER_KEY {
            return None;
        }
        *count += 1;
        Some(Place {
            limits: self.clone(),
            key,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_share_and_closing_one_frees_a_place() {
        let limits = Arc::new(PerKey::default());
        let places: Vec<Place> = (0..CONNECTIONS_PER_KEY)
            .map(|_| limits.take([1; 32]).unwrap())
            .collect();
        assert!(limits.take([1; 32]).is_none());
        // Other keys are not affected.
        assert!(limits.take([2; 32]).is_some());
        drop(places);
        assert!(limits.take([1; 32]).is_some());
        assert!(
            limits.open.lock().unwrap().get(&[2; 32]).is_none(),
            "freed entries go"
        );
    }
}
