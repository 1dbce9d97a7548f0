//! The feed's messages on the wire (postcard, one request and one reply
//! per stream; see `transport::feed`).

use serde::{Deserialize, Serialize};

use super::{Batch, Image, Prefixes};

/// Most prefixes one follower may ask for, and the longest prefix.
pub const MAX_PREFIXES: usize = 64;
pub const MAX_PREFIX_LEN: usize = 1024;
/// Longest a server holds a pull open waiting for a new revision.
pub const MAX_WAIT_MS: u32 = 30_000;
/// Largest reply a follower reads.
pub const MAX_REPLY: usize = 64 << 20;

/// "Send me what follows revision `after` under `prefixes`; if nothing
/// does yet, wait up to `wait_ms` for it."
///
/// Sent by: a follower (an edge agent), to any peer. Checked by the
/// server: the cluster is its own and the request is within the bounds
/// above; it then answers only from what it verified or committed itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub cluster_id: u64,
    pub after: i64,
    pub prefixes: Prefixes,
    pub wait_ms: u32,
}

/// A server's answer. Sent by: any peer, trusted by nobody: the follower
/// verifies batches and images with `feed::follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Batch(Batch),
    Image(Image),
    /// The server cannot help (behind the asker, does not hold those
    /// prefixes, or refused the request); the reason is for the log.
    Unavailable(String),
}

impl Pull {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into memory cannot fail")
    }

    /// Decodes and bounds-checks a request.
    pub fn decode(bytes: &[u8]) -> Result<Pull, String> {
        let pull: Pull =
            postcard::from_bytes(bytes).map_err(|err| format!("undecodable pull: {err}"))?;
        if pull.prefixes.0.is_empty() || pull.prefixes.0.len() > MAX_PREFIXES {
            return Err(format!(
                "a pull names {} prefixes: between 1 and {MAX_PREFIXES} are allowed",
                pull.prefixes.0.len()
            ));
        }
        if pull.prefixes.0.iter().any(|p| p.len() > MAX_PREFIX_LEN) {
            return Err(format!("a prefix is longer than {MAX_PREFIX_LEN} bytes"));
        }
        if pull.after < 0 {
            return Err("a pull's revision is negative".into());
        }
        Ok(Pull {
            wait_ms: pull.wait_ms.min(MAX_WAIT_MS),
            ..pull
        })
    }
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into memory cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, String> {
        postcard::from_bytes(bytes).map_err(|err| format!("undecodable reply: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulls_out_of_bounds_are_refused() {
        let pull = |prefixes: Vec<Vec<u8>>, after| Pull {
            cluster_id: 1,
            after,
            prefixes: Prefixes(prefixes),
            wait_ms: u32::MAX,
        };
        let fine = Pull::decode(&pull(vec![b"/a/".to_vec()], 3).encode()).unwrap();
        assert_eq!(fine.wait_ms, MAX_WAIT_MS);
        assert!(Pull::decode(&pull(Vec::new(), 0).encode()).is_err());
        assert!(Pull::decode(&pull(vec![b"/".to_vec(); MAX_PREFIXES + 1], 0).encode()).is_err());
        assert!(Pull::decode(&pull(vec![vec![b'a'; MAX_PREFIX_LEN + 1]], 0).encode()).is_err());
        assert!(Pull::decode(&pull(vec![b"/a/".to_vec()], -1).encode()).is_err());
        assert!(Pull::decode(b"\xff\xff\xff").is_err());
        assert!(Reply::decode(b"\x09").is_err());
    }
}
