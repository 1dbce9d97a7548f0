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

#[test]
fn the_metrics_server_backs_off_when_accept_fails_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics) = metrics_config(dir.path());
    let agent = Agent::start_with(
        dir.path(),
        common::free_port(),
        &["--config", config.to_str().unwrap()],
    );
    wait_for("metrics served", Duration::from_secs(20), || {
        http(metrics, "/health").is_some()
    });
    // Leave the agent a few file descriptors (prlimit of the soft limit
    // of the running process), then connect more clients than that: accepting fails
    // with "too many open files".
    let pid = agent.pid().to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = |n: usize| {
        let out = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={n}:")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "prlimit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    limit(open + 8);
    let idle: Vec<std::net::TcpStream> = (0..40)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", metrics)).ok())
        .collect();
    agent.wait_for_log(
        "metrics server cannot accept; backing off",
        Duration::from_secs(20),
    );
    // It backs off (100 ms) rather than spinning: a handful of lines a
    // second, not thousands.
    std::thread::sleep(Duration::from_secs(1));
    let before = agent.log().matches("metrics server cannot accept").count();
    std::thread::sleep(Duration::from_secs(1));
    let during = agent.log().matches("metrics server cannot accept").count() - before;
    assert!(during <= 20, "{during} accept errors in a second: it spins");
    // Once the idle clients go (or are cut off) it serves again.
    drop(idle);
    limit(open + 256);
    wait_for("metrics served again", Duration::from_secs(20), || {
        http(metrics, "/health").is_some_and(|(code, _)| code == 200)
    });
}

/// Appends to the newest segment of the raft WAL in `wal_dir` a record of
/// an entry at the next index whose data no edgeconf can read (records are
/// `[len u32][crc32 u32 chained from the previous record][protobuf Entry]`).
/// Returns its index.
fn append_unreadable_entry(wal_dir: &std::path::Path) -> u64 {
    use protobuf::Message as _;
    use std::os::unix::fs::FileExt;
    let segment = std::fs::read_dir(wal_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .expect("a WAL segment");
    let bytes = std::fs::read(&segment).unwrap();
    let (mut end, mut crc, mut last) = (0, 0, raft::eraftpb::Entry::default());
    while let Some(header) = bytes.get(end..end + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let Some(payload) = bytes.get(end + 8..end + 8 + len).filter(|_| len > 0) else {
            break;
        };
        last = raft::eraftpb::Entry::parse_from_bytes(payload).unwrap();
        crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        end += 8 + len;
    }
    let entry = raft::eraftpb::Entry {
        index: last.index + 1,
        term: last.term,
        data: b"\xffnot an edgeconf entry".to_vec().into(),
        ..Default::default()
    };
    let payload = entry.write_to_bytes().unwrap();
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(&payload);
    let mut record = (payload.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&hasher.finalize().to_le_bytes());
    record.extend_from_slice(&payload);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&record, end as u64).unwrap();
    file.sync_all().unwrap();
    entry.index
}

#[test]
fn a_committed_entry_that_cannot_be_applied_stops_every_start_naming_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut agent = Agent::start_with(dir.path(), port, &[]);
    common::ok(common::edgeconf(&agent, &["put", "/kept", "yes"]));
    agent.kill9();
    // The restarted single voter commits every entry of its log with its
    // first entry of the new term, this one too.
    let index = append_unreadable_entry(&agent.data_dir.join("raft-wal"));
    for start in 1..=2 {
        let output = common::run_with_timeout(
            std::process::Command::new(common::BIN).args([
                "agent",
                "--data-dir",
                agent.data_dir.to_str().unwrap(),
                "--listen-client-urls",
                &format!("http://127.0.0.1:{port}"),
                "--listen-peer-urls",
                &format!("quic://127.0.0.1:{}", common::free_port()),
            ]),
            Duration::from_secs(30),
        );
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "start {start}:\n{log}");
        assert!(
            log.contains(&format!("entry {index} is unreadable"))
                && log.contains("every restart stops here too")
                && log.contains("edgeconf member remove"),
            "start {start}:\n{log}"
        );
    }
}
