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

/// GET `path` on the metrics port: the status code and body, or `None`
/// if nothing answers.
fn http(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    Some((code, body.to_string()))
}

/// A config serving metrics on a free port: its path and the port.
fn metrics_config(dir: &std::path::Path) -> (std::path::PathBuf, u16) {
    let metrics = common::free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!("listen_metrics_url = \"http://127.0.0.1:{metrics}\"\n"),
    )
    .unwrap();
    (config, metrics)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_whose_raft_thread_dies_exits_non_zero_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics) = metrics_config(dir.path());
    let args = ["--config", config.to_str().unwrap()];
    let port = common::free_port();
    let mut agent = Agent::start_with(dir.path(), port, &args);
    wait_for("a healthy agent", Duration::from_secs(20), || {
        http(metrics, "/health").is_some_and(|(code, _)| code == 200)
    });
    common::ok(common::edgeconf(&agent, &["put", "/kept", "yes"]));

    // The fault-injection switch makes the raft thread panic.
    std::fs::write(agent.data_dir.join("fault-raft-crash"), b"").unwrap();
    let mut red = None;
    wait_for("/health turns red", Duration::from_secs(20), || {
        red = http(metrics, "/health").filter(|(code, _)| *code == 503);
        red.is_some()
    });
    let (_, body) = red.unwrap();
    assert!(body.contains("consensus stopped"), "{body}");
    let mut status = None;
    wait_for("the agent exits", Duration::from_secs(20), || {
        status = agent.exit_status();
        status.is_some()
    });
    let status = status.unwrap();
    assert_eq!(status.code(), Some(1), "{status:?}\n{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("the raft thread panicked: fault injection"),
        "{log}"
    );
    assert!(log.contains("consensus stopped"), "{log}");
    assert!(http(metrics, "/health").is_none(), "it stopped serving");

    // A supervisor's restart finds everything it acknowledged.
    std::fs::remove_file(agent.data_dir.join("fault-raft-crash")).unwrap();
    let agent = Agent::start_with(dir.path(), port, &args);
    wait_for("healthy again", Duration::from_secs(20), || {
        http(metrics, "/health").is_some_and(|(code, _)| code == 200)
    });
    let got = common::ok(common::edgeconf(
        &agent,
        &["get", "/kept", "--print-value-only"],
    ));
    assert_eq!(got, "yes\n");
}

#[test]
fn health_turns_red_when_a_voter_knows_no_leader() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = common::free_port();
    let mut head = vec![String::new(); 3];
    head[0] = format!("listen_metrics_url = \"http://127.0.0.1:{metrics}\"");
    let mut cluster = common::fleet::fleet(dir.path(), 0, "", &[], &head);
    wait_for("a healthy voter", Duration::from_secs(30), || {
        http(metrics, "/health").is_some_and(|(code, _)| code == 200)
    });
    // Without a quorum its leader (itself or another) is gone: a leader
    // steps down (check quorum), a follower's leader stops answering.
    cluster.kill9(1);
    cluster.kill9(2);
    let started = std::time::Instant::now();
    let mut answer = None;
    wait_for("/health turns red", Duration::from_secs(30), || {
        answer = http(metrics, "/health");
        answer.as_ref().is_some_and(|(code, _)| *code == 503)
    });
    let (_, body) = answer.unwrap();
    assert!(body.contains("no leader"), "{body}");
    eprintln!(
        "/health red {:?} after the quorum was lost",
        started.elapsed()
    );
}

#[test]
fn the_metrics_server_cuts_off_connections_that_send_nothing() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics) = metrics_config(dir.path());
    let _agent = Agent::start_with(
        dir.path(),
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );
    wait_for("metrics served", Duration::from_secs(20), || {
        http(metrics, "/health").is_some()
    });
    // More idle connections than the server serves at once: each is
    // closed (at accept, or after the header timeout), none is kept.
    let started = std::time::Instant::now();
    let idle: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).unwrap())
        .collect();
    for mut stream in idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        let read = stream.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
            "an idle connection was kept open"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "idle connections held {took:?}"
    );
    assert_eq!(http(metrics, "/health").map(|(code, _)| code), Some(200));
}
