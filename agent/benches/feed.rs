//! The edge feed's fan-out at fleet scale, in simulation: the agent's own
//! tree policy (`edgeconf::edge::sources`) and real message sizes (real
//! batches, signed checkpoints and pulls encoded as on the wire), over a
//! simulated network with latency, 10% packet loss (each lost packet costs
//! a QUIC retransmission) and 1% of edges down. For 1,000 and 5,000 edges
//! it prints the time until a change is on 99% and 100% of live edges, the
//! copies and bytes a voter sends per change, and bytes per edge per second
//! at rest and for a burst of 100 writes.
//!
//! Run: `cargo bench --bench feed` (asserts nothing; a few seconds).

use std::net::SocketAddr;

use ed25519_dalek::SigningKey;
use edgeconf::edge::sources::{candidates, Peer, Role};
use edgeconf::feed::wire::{Pull, Reply};
use edgeconf::feed::{Batch, Checkpoint, Entry, Prefixes, Revision, Value};
use rand::{Rng, SeedableRng};

/// One-way latency between two hosts, milliseconds.
const LATENCY_MS: (u64, u64) = (1, 10);
/// What a lost packet costs: QUIC's probe timeout on such a link.
const RETRANSMIT_MS: u64 = 200;
/// What a follower loses on a dead source before trying the next: the
/// QUIC idle timeout that ends its long poll.
const DEAD_SOURCE_MS: u64 = 5_000;
/// QUIC, UDP and IP overhead per message, bytes (header, AEAD tag).
const OVERHEAD: usize = 60;
/// Long-poll period at rest, and QUIC keep-alive period.
const LONG_POLL_S: f64 = 10.0;
const KEEP_ALIVE_S: f64 = 2.0;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 2380))
}

fn batch(revisions: usize, value_len: usize) -> Batch {
    let key = SigningKey::from_bytes(&[1; 32]);
    let value = vec![b'x'; value_len];
    let revisions: Vec<Revision> = (1..=revisions as i64)
        .map(|r| Revision {
            revision: r,
            entries: vec![Entry::put(b"/app/config", &value, 1, r, 0)],
        })
        .collect();
    let values = revisions
        .iter()
        .map(|r| Value {
            revision: r.revision,
            key: b"/app/config".to_vec(),
            value: value.clone(),
        })
        .collect();
    Batch {
        after: 0,
        revisions,
        values,
        checkpoint: Checkpoint {
            cluster_id: 1,
            revision: 1,
            chain: [7; 32],
            head: 1,
            time_unix: 1,
        }
        .sign(&key),
    }
}

fn scenario(n: usize, loss: f64, dead_share: f64, rng: &mut rand::rngs::StdRng) {
    let mut peers: Vec<Peer> = (0..3)
        .map(|v| Peer {
            name: format!("v{v}"),
            addr: addr(1_000_000 + v),
            role: Role::Voter,
            group: String::new(),
            dials_out: false,
        })
        .collect();
    peers.extend((0..n).map(|i| Peer {
        name: format!("e{i:05}"),
        addr: addr(i),
        role: Role::Edge,
        group: "g".into(),
        dials_out: false,
    }));
    let dead: Vec<bool> = (0..n).map(|_| rng.random_bool(dead_share)).collect();
    let positions: std::collections::HashMap<SocketAddr, usize> =
        (0..n).map(|i| (addr(i), i)).collect();
    let index_of = |a: &SocketAddr| -> Option<usize> { positions.get(a).copied() };

    let hop = |rng: &mut rand::rngs::StdRng| {
        let mut delay = rng.random_range(LATENCY_MS.0..=LATENCY_MS.1);
        while rng.random_bool(loss) {
            delay += RETRANSMIT_MS;
        }
        delay
    };
    // Names sort as positions, so every ancestor is computed first.
    let mut arrival = vec![u64::MAX; n];
    let mut from_voters = 0usize;
    for i in 0..n {
        if dead[i] {
            continue;
        }
        let mut waited = 0;
        for source in candidates(&format!("e{i:05}"), "g", &peers) {
            match index_of(&source) {
                None => {
                    from_voters += 1;
                    arrival[i] = waited + hop(rng);
                    break;
                }
                Some(parent) if dead[parent] => waited += DEAD_SOURCE_MS,
                Some(parent) => {
                    arrival[i] = arrival[parent].max(waited) + hop(rng);
                    break;
                }
            }
        }
    }
    let mut times: Vec<u64> = arrival.into_iter().filter(|&t| t != u64::MAX).collect();
    times.sort_unstable();
    let at = |share: f64| {
        times[((times.len() as f64 * share).ceil() as usize).clamp(1, times.len()) - 1]
    };

    let one = Reply::Batch(batch(1, 256)).encode().len() + OVERHEAD;
    let empty = Reply::Batch(batch(0, 0)).encode().len() + OVERHEAD;
    let pull = Pull {
        cluster_id: 1,
        after: 12_345,
        prefixes: Prefixes(vec![b"/app/".to_vec(), b"_edgeconf/rollout/".to_vec()]),
        wait_ms: 10_000,
    }
    .encode()
    .len()
        + OVERHEAD;
    let burst = Reply::Batch(batch(100, 256)).encode().len() + OVERHEAD;
    let rest = (pull + empty) as f64 / LONG_POLL_S + 2.0 * OVERHEAD as f64 / KEEP_ALIVE_S;
    println!(
        "{n} edges, {:.0}% loss, {} down: change on 99% of live edges in {} ms, on 100% in {} ms; \
         voters send {from_voters} copies per change ({} bytes in all, {:.0} per voter); \
         per edge at rest {rest:.0} B/s; a burst of 100 writes of 256 B costs an edge {} B in one batch, \
         at most {} B if every write came in its own",
        loss * 100.0,
        dead.iter().filter(|d| **d).count(),
        at(0.99),
        at(1.0),
        from_voters * (one + pull),
        (from_voters * (one + pull)) as f64 / 3.0,
        burst + pull,
        100 * (one + pull),
    );
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for n in [1_000, 5_000] {
        scenario(n, 0.0, 0.0, &mut rng);
        scenario(n, 0.10, 0.01, &mut rng);
    }
}
