//! A fleet of real agents on loopback: voters n1..n3 and edge agents after
//! them, joined by gossip.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Cluster;
use super::Agent;

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Voters n1..n3 (`region = "eu"`) and edge agents n4..n(3+edges)
/// (`region = "us"`, `tier = "canary"`). `extra` is TOML per agent
/// (tables), `head` top-level keys per agent.
pub fn fleet(dir: &Path, edges: usize, gossip: &str, extra: &[String], head: &[String]) -> Cluster {
    let labels = |i: usize| {
        if i < 3 {
            "region = \"eu\"".to_string()
        } else {
            "region = \"us\"\ntier = \"canary\"".to_string()
        }
    };
    fleet_with(dir, edges, labels, gossip, extra, head)
}

/// [`fleet`] with the `[labels]` of agent `i` from `labels(i)`.
pub fn fleet_with(
    dir: &Path,
    edges: usize,
    labels: impl Fn(usize) -> String,
    gossip: &str,
    extra: &[String],
    head: &[String],
) -> Cluster {
    let mut cluster = Cluster::new(dir, 3 + edges);
    // Every voter is a seed, so an agent joins with any one of them up.
    let seeds: Vec<String> = cluster.slots[..3]
        .iter()
        .map(|slot| format!("{:?}", slot.peer_url.trim_start_matches("quic://")))
        .collect();
    let seeds = seeds.join(", ");
    for i in 0..3 + edges {
        let role = if i < 3 { "voter" } else { "edge" };
        cluster.member_head[i] = format!(
            "role = {role:?}\n{}",
            head.get(i).map(String::as_str).unwrap_or_default()
        );
        cluster.member_config[i] = format!(
            "[labels]\n{}\n\n[gossip]\nseeds = [{seeds}]\n{gossip}\n{}",
            labels(i),
            extra.get(i).map(String::as_str).unwrap_or_default()
        );
    }
    let initial = cluster.initial_cluster(0..3);
    for i in 0..3 {
        cluster.write_config(i, &initial, "new");
        cluster.run(i);
    }
    cluster.wait_for_leader();
    for i in 3..3 + edges {
        let own = cluster.initial_cluster(i..i + 1);
        cluster.write_config(i, &own, "new");
        cluster.run(i);
    }
    cluster
}

pub fn agent(cluster: &Cluster, i: usize) -> &Agent {
    cluster.agents[i].as_ref().expect("agent is running")
}

pub fn json(output: String) -> Value {
    serde_json::from_str(&output).unwrap_or_else(|err| panic!("not JSON ({err}): {output}"))
}

#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// GET `path` from 127.0.0.1:`port`: the whole response, headers included.
pub fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A tiny HTTP server on loopback for health checks: every request gets
/// `reply()`, a whole HTTP/1.1 response. It stops when dropped.
pub struct HttpStub {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl HttpStub {
    pub fn start(reply: impl Fn() -> &'static str + Send + 'static) -> HttpStub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf);
                        let _ = stream.write_all(reply().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        HttpStub { port, stop }
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
