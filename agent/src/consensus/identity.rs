//! Cluster and member ids, derived from peer URLs (SHA-256), so every
//! member of a new cluster computes the same ones.

use sha2::{Digest, Sha256};

/// Who this member is and which cluster it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// A member's raft id, from its first peer URL: `member add` computes it
/// for a newcomer, which computes the same from its own config.
pub fn member_id(peer_url: &str) -> u64 {
    // Zero is not a valid raft id.
    hash64(&[peer_url.as_bytes()]).max(1)
}

impl Identity {
    /// Derives ids from names and peer URLs, so that every member of a new
    /// cluster computes the same cluster id.
    pub fn derive(name: &str, initial_cluster: &[(String, String)]) -> Self {
        let mut ids: Vec<u64> = initial_cluster.iter().map(|(_, u)| member_id(u)).collect();
        ids.sort_unstable();
        let own_url = initial_cluster
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_default();
        let id_bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let parts: Vec<&[u8]> = id_bytes.iter().map(|b| b.as_slice()).collect();
        Self {
            cluster_id: hash64(&parts),
            member_id: member_id(own_url),
        }
    }
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha256 is 32 bytes"))
}
