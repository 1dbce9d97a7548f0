//! The footprint of an edge agent: one voter and one edge on loopback, the
//! edge subscribed to `/app/` (`sync`). Resident memory of the edge when
//! idle with 100 keys, and again after 10,000 writes under its prefix,
//! with the voter's beside it.
//!
//! Run: `cargo bench --bench edge` (prints figures; asserts nothing).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{edgeconf, free_port, median, Server};

const KEYS: usize = 100;
const WRITES: usize = 10_000;
const VALUE: usize = 256;

fn node_key(dir: &Path) -> String {
    let out = Command::new(edgeconf())
        .arg("node-key")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("edgeconf node-key");
    format!("{:?}", String::from_utf8_lossy(&out.stdout).trim())
}

fn spawn(dir: &Path, name: &str, toml: String, client: u16) -> Server {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let mut command = Command::new(edgeconf());
    command.arg("agent").arg("--config").arg(&config);
    Server::spawn(name, &mut command, client)
}

/// Samples RSS a few times, a second apart, and takes the median.
fn settled_rss(server: &Server) -> f64 {
    let samples = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_secs(1));
            server.rss_mib()
        })
        .collect();
    median(samples)
}

/// Waits until the edge serves `key` = `value` from its own store.
async fn wait_for(edge: &mut etcd_client::Client, key: &str, value: &[u8]) -> Duration {
    let start = Instant::now();
    let serializable = etcd_client::GetOptions::new().with_serializable();
    loop {
        let got = edge.get(key, Some(serializable.clone())).await;
        if got.is_ok_and(|r| r.kvs().first().is_some_and(|kv| kv.value() == value)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "edge never got {key}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let (voter_dir, edge_dir) = (dir.path().join("voter"), dir.path().join("edge"));
    let (voter_key, edge_key) = (node_key(&voter_dir), node_key(&edge_dir));
    let (vc, vp, ec, ep) = (free_port(), free_port(), free_port(), free_port());
    let voter = spawn(
        dir.path(),
        "voter",
        format!(
            "name = \"v\"\ndata_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{vc}\"]\n\
             listen_peer_urls = [\"quic://127.0.0.1:{vp}\"]\nlog_level = \"warn\"\n\
             [peer_trust]\nkeys = [{voter_key}, {edge_key}]\n",
            voter_dir.display().to_string()
        ),
        vc,
    );
    let edge = spawn(
        dir.path(),
        "edge",
        format!(
            "name = \"e\"\nrole = \"edge\"\ndata_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{ec}\"]\n\
             listen_peer_urls = [\"quic://127.0.0.1:{ep}\"]\nlog_level = \"warn\"\nsync = [\"/app/\"]\n\
             [gossip]\nseeds = [\"127.0.0.1:{vp}\"]\n\
             [peer_trust]\nkeys = [{voter_key}]\nvoters = [{voter_key}]\n",
            edge_dir.display().to_string()
        ),
        ec,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let value = vec![b'x'; VALUE];
    let (caught_up, after_writes) = rt.block_on(async {
        let mut writer = etcd_client::Client::connect([voter.endpoint.as_str()], None)
            .await
            .unwrap();
        let mut reader = etcd_client::Client::connect([edge.endpoint.as_str()], None)
            .await
            .unwrap();
        for n in 0..KEYS {
            let mut value = value.clone();
            value[..8].copy_from_slice(format!("{n:08}").as_bytes());
            writer
                .put(format!("/app/{n:04}"), value, None)
                .await
                .unwrap();
        }
        writer.put("/app/mark", "idle", None).await.unwrap();
        let caught_up = wait_for(&mut reader, "/app/mark", b"idle").await;
        let idle = settled_rss(&edge);
        println!(
            "edge, idle with {KEYS} keys of {VALUE} B: RSS {idle:.1} MiB (voter {:.1} MiB)",
            voter.rss_mib()
        );
        let start = Instant::now();
        for n in 0..WRITES {
            let mut value = value.clone();
            value[..8].copy_from_slice(format!("{n:08}").as_bytes());
            writer
                .put(format!("/app/{:04}", n % KEYS), value, None)
                .await
                .unwrap();
        }
        writer.put("/app/mark", "written", None).await.unwrap();
        let lag = wait_for(&mut reader, "/app/mark", b"written").await;
        println!(
            "{WRITES} writes in {:.1} s; the edge had the last {} ms after it was acknowledged",
            start.elapsed().as_secs_f64(),
            lag.as_millis()
        );
        (caught_up, settled_rss(&edge))
    });
    println!(
        "edge, after {WRITES} writes under its prefix: RSS {after_writes:.1} MiB (voter {:.1} MiB)",
        voter.rss_mib()
    );
    println!(
        "the edge first served its keys {} ms after the last put",
        caught_up.as_millis()
    );
    let store = std::fs::metadata(edge_dir.join("store.redb")).map_or(0, |m| m.len());
    println!(
        "edge store file: {:.1} MiB",
        store as f64 / (1 << 20) as f64
    );
}
