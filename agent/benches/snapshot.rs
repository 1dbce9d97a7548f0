//! A member far behind catches up from a raft snapshot: how long the copy
//! takes, and how much memory the leader and the newcomer hold while it
//! streams (copies are files sent in chunks, never whole in memory).
//!
//! Two of three members start and take `--mib` MiB of values (default
//! 256) in 64 KiB puts; the log is compacted past them; the third starts
//! with an empty data dir and must install a snapshot. Printed: the store
//! size, the time from the third's start until it serves the last
//! revision, and the peak RSS (VmHWM) of the leader and of the newcomer.
//!
//! Run: `cargo bench --bench snapshot [-- --mib 512]` (asserts nothing).

mod support;

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use support::{edgeconf_configs, Server};

const VALUE: usize = 64 << 10;
const WRITERS: usize = 16;

fn main() {
    let mib: usize = std::env::args()
        .skip_while(|a| a != "--mib")
        .nth(1)
        .map_or(256, |v| v.parse().expect("--mib takes a number"));
    let keys = mib * (1 << 20) / VALUE;
    let dir = tempfile::tempdir().unwrap();
    let members = edgeconf_configs(dir.path(), 3, |_| {
        "snapshot_count = 500\nsnapshot_catchup_entries = 50\n".to_string()
    });
    let running: Vec<Server> = members[..2]
        .iter()
        .enumerate()
        .map(|(i, m)| m.spawn(i))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let endpoint = running[0].endpoint.clone();
    let written = Instant::now();
    let revision = rt.block_on(async {
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (next, endpoint) = (next.clone(), endpoint.clone());
                tokio::spawn(async move {
                    let mut client = connect(&endpoint).await;
                    let value = vec![b'v'; VALUE];
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= keys {
                            break;
                        }
                        // Retried while the two elect a leader.
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while let Err(err) = client
                            .put(format!("/bulk/{n:08}"), value.clone(), None)
                            .await
                        {
                            assert!(Instant::now() < deadline, "put: {err}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let mut client = connect(&endpoint).await;
        client
            .get("/bulk/", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    });
    println!(
        "wrote {mib} MiB ({keys} values of {} KiB) in {:.1} s, revision {revision}",
        VALUE >> 10,
        written.elapsed().as_secs_f64()
    );
    // Let the members compact their logs past the writes.
    std::thread::sleep(Duration::from_secs(6));

    let before: Vec<f64> = running.iter().map(Server::rss_mib).collect();
    let mut during = before.clone();
    let mut newcomer_max = 0f64;
    let started = Instant::now();
    let newcomer = members[2].spawn(2);
    rt.block_on(async {
        let mut client = connect(&newcomer.endpoint).await;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let serializable = GetOptions::new().with_serializable().with_count_only();
            let got = client.get("/bulk/", Some(serializable.with_prefix())).await;
            if got.is_ok_and(|r| r.count() as usize == keys) {
                break;
            }
            for (max, server) in during.iter_mut().zip(&running) {
                *max = max.max(server.rss_mib());
            }
            newcomer_max = newcomer_max.max(newcomer.rss_mib());
            assert!(Instant::now() < deadline, "the newcomer never caught up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let took = started.elapsed().as_secs_f64();
    let store_mib = std::fs::metadata(members[0].data_dir.join("store.redb"))
        .map_or(0.0, |m| m.len() as f64 / f64::from(1 << 20));
    println!("store.redb on a member: {store_mib:.0} MiB");
    println!("newcomer caught up by snapshot in {took:.1} s");
    for i in 0..running.len() {
        println!(
            "member n{i}: RSS {:.0} MiB before the catch-up, at most {:.0} MiB during it (sampled every 100 ms)",
            before[i], during[i]
        );
    }
    println!(
        "newcomer: RSS at most {newcomer_max:.0} MiB sampled, peak (VmHWM) {:.0} MiB",
        newcomer.peak_rss_mib()
    );
    let installed =
        std::fs::read_dir(members[2].data_dir.join("snapshots/in")).map_or(0, |d| d.count());
    println!("received copies left on the newcomer's disk: {installed}");
}

async fn connect(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect([endpoint], None).await {
            Ok(client) => return client,
            Err(err) => {
                assert!(Instant::now() < deadline, "connect {endpoint}: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
