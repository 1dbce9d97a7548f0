//! Durability: kill -9 an agent in the middle of a stream of puts; after a
//! restart every acknowledged put is there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{etcd_client, Agent};

const WRITERS: usize = 8;

/// Sync the store and compact the raft log every 100 entries, so that kills
/// land between syncs, compactions and plain appends alike.
const COMPACT_OFTEN: &[&str] = &[
    "--snapshot-count",
    "100",
    "--snapshot-catchup-entries",
    "10",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut total_acked = 0;
    // Kill at different moments of the stream.
    for (round, kill_after_ms) in [250u64, 700, 1300].into_iter().enumerate() {
        let mut agent = Agent::start_with(dir.path(), port, COMPACT_OFTEN);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let mut client = etcd_client(&agent).await;
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                for seq in 0.. {
                    let key = format!("crash/{round}/{writer}/{seq:06}");
                    let value = format!("value-{round}-{writer}-{seq}");
                    match client.put(key.clone(), value.clone(), None).await {
                        Ok(_) => acked.lock().unwrap().push((key, value)),
                        Err(_) => break,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        agent.kill9();
        for writer in writers {
            tokio::time::timeout(Duration::from_secs(30), writer)
                .await
                .expect("writers stop once the agent is gone")
                .unwrap();
        }

        let agent = Agent::start_with(dir.path(), port, COMPACT_OFTEN);
        let mut client = etcd_client(&agent).await;
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: no put was acknowledged before the kill"
        );
        let stored = client
            .get(
                format!("crash/{round}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        let stored: std::collections::HashMap<Vec<u8>, Vec<u8>> = stored
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect();
        for (key, value) in &acked {
            assert_eq!(
                stored.get(key.as_bytes()).map(Vec::as_slice),
                Some(value.as_bytes()),
                "round {round}: acknowledged put {key} lost after kill -9"
            );
        }
        total_acked += acked.len();
        eprintln!(
            "round {round}: {} acknowledged puts all present after kill -9 at {kill_after_ms} ms",
            acked.len()
        );
        drop(agent);
    }
    assert!(total_acked > 0);
}
