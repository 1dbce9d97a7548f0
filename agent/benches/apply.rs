//! What applying committed puts to the store costs, per put, by how many
//! puts share one write transaction: the raft thread applies each round's
//! committed entries in one transaction, so this is the store's share of a
//! put's CPU on every member (issue 19).
//!
//! One thread, a real redb file, 10,000 keys of 256-byte values loaded
//! first, then puts to random keys of them (each put reads the key's
//! previous version and writes three rows). "After 1 ms idle" sleeps
//! before each transaction, as a member under one sequential client does,
//! and times only the transaction.
//!
//! Run: `cargo bench --bench apply` (prints the median of three rounds;
//! asserts nothing).

use std::time::{Duration, Instant};

use edgeconf::store::{Command, Proposal, PutRequest, Store};

const KEYS: u64 = 10_000;
const ROUNDS: usize = 3;

fn put(key: u64) -> Proposal {
    Proposal {
        command: Command::Put(PutRequest {
            key: format!("/bench/key-{key:08}").into_bytes(),
            value: vec![b'v'; 256],
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }),
        time_unix_ms: 1_700_000_000_000,
    }
}

/// A store holding `KEYS` keys, and the next raft index to apply.
fn loaded_store(dir: &std::path::Path) -> (Store, u64) {
    let store = Store::open(&dir.join("store.redb")).unwrap();
    let mut index = 1;
    let keys: Vec<u64> = (0..KEYS).collect();
    for chunk in keys.chunks(500) {
        let batch: Vec<Proposal> = chunk.iter().map(|&key| put(key)).collect();
        store.apply_batch(&batch, index, false).unwrap();
        index += 1;
    }
    (store, index)
}

/// Microseconds per put, applying `puts` puts `batch` to a transaction.
fn per_put(batch: usize, puts: usize, idle: Option<Duration>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (store, mut index) = loaded_store(dir.path());
    // xorshift: the same keys in every round.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next_key = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % KEYS
    };
    let mut busy = Duration::ZERO;
    for _ in 0..puts / batch {
        let proposals: Vec<Proposal> = (0..batch).map(|_| put(next_key())).collect();
        if let Some(idle) = idle {
            std::thread::sleep(idle);
        }
        let start = Instant::now();
        store.apply_batch(&proposals, index, false).unwrap();
        busy += start.elapsed();
        index += 1;
    }
    busy.as_secs_f64() * 1e6 / (puts / batch * batch) as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    println!("store apply, {KEYS} keys of 256 bytes, median of {ROUNDS} rounds");
    println!("{:<34} {:>10}", "puts per transaction", "µs per put");
    let cases: [(&str, usize, usize, Option<Duration>); 5] = [
        (
            "1, after 1 ms idle",
            1,
            2_000,
            Some(Duration::from_millis(1)),
        ),
        ("1", 1, 20_000, None),
        ("8", 8, 40_000, None),
        ("32", 32, 40_000, None),
        ("128", 128, 40_000, None),
    ];
    for (label, batch, puts, idle) in cases {
        let rounds = (0..ROUNDS).map(|_| per_put(batch, puts, idle)).collect();
        println!("{label:<34} {:>10.1}", median(rounds));
    }
}
