//! The edge tier with real processes on loopback: 3 voters and 20 edge
//! agents that are not raft members. A put reaches every edge's file; the
//! leader and a relaying edge are killed mid-stream and every edge still
//! converges; an edge down for 1,000 writes catches up; an edge started
//! with every voter down renders its last verified file at once. Five edges
//! are behind "NAT": they accept no peer connection and are reached only
//! over the ones they dial.
//! (Relays that lie are refused in `agent/src/edge/tests.rs`, on real QUIC
//! sockets with the real protocol.)

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::fleet::{fleet_with, wait_until};
use common::{edgeconf, ok};

const VOTERS: usize = 3;
const EDGES: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(120);
/// Edges that accept no peer connections (`[gossip] dial_out_only`).
const BEHIND_NAT: std::ops::Range<usize> = VOTERS + 10..VOTERS + 15;

struct Fleet {
    cluster: Cluster,
    files: Vec<PathBuf>,
}

fn start(dir: &std::path::Path) -> Fleet {
    let (mut head, mut extra, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..VOTERS + EDGES {
        let out = dir.join(format!("out{}", i + 1));
        std::fs::create_dir_all(&out).unwrap();
        let file = out.join("app.conf");
        head.push(format!("render_root = {:?}", out.display().to_string()));
        // Written inside [gossip], before the tables.
        let nat = if BEHIND_NAT.contains(&i) {
            "dial_out_only = true\n"
        } else {
            ""
        };
        extra.push(if i < VOTERS {
            String::new()
        } else {
            format!(
                "{nat}[[render]]\nkey = \"/app/config\"\ndest = {:?}\ndebounce = \"1ms\"\n",
                file.display().to_string()
            )
        });
        files.push(file);
    }
    // The default probe interval and timeout (1 s, 500 ms): 17 agents of a
    // debug build share 2 cores in CI, and a 200 ms probe timeout there
    // once took a starved, live edge for dead.
    let gossip = "probe_interval = \"1s\"\nprobe_timeout = \"500ms\"";
    let cluster = fleet_with(dir, EDGES, |_| String::new(), gossip, &extra, &head);
    Fleet { cluster, files }
}

impl Fleet {
    fn edges(&self) -> impl Iterator<Item = usize> + '_ {
        (VOTERS..VOTERS + EDGES).filter(|&i| self.cluster.agents[i].is_some())
    }

    fn file(&self, i: usize) -> Option<String> {
        std::fs::read_to_string(&self.files[i]).ok()
    }

    /// Waits until every running edge's file says `value`; returns how long.
    fn converge(&self, value: &str, what: &str) -> Duration {
        wait_until(what, TIMEOUT, || {
            self.edges().all(|i| self.file(i).as_deref() == Some(value))
        })
    }

    fn voter_endpoints(&self) -> Vec<String> {
        (0..VOTERS)
            .filter(|&i| self.cluster.agents[i].is_some())
            .map(|i| format!("http://{}", self.cluster.endpoint(i)))
            .collect()
    }
}

/// `count` puts of `/app/config` (the last one `last`) through the voters.
fn puts(endpoints: Vec<String>, count: usize, last: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        for n in 0..count {
            let value = if n + 1 == count {
                last.to_string()
            } else {
                format!("w{n}")
            };
            // A put may fail while a leader is elected: retry it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(err) = client.put("/app/config", value.clone(), None).await {
                assert!(Instant::now() < deadline, "put {n} kept failing: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

#[test]
fn edges_follow_the_feed_through_kills_absences_and_offline_boots() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = start(dir.path());

    // Edges are not raft members.
    let listed = ok(common::etcdctl(
        fleet.cluster.agents[0].as_ref().unwrap(),
        &["member", "list"],
    ));
    assert_eq!(listed.lines().count(), VOTERS, "{listed}");

    // A put reaches every edge's file.
    let start = Instant::now();
    puts(fleet.voter_endpoints(), 1, "v1");
    fleet.converge("v1", "every edge renders v1");
    eprintln!(
        "put to the file on all {EDGES} edges: {:?}",
        start.elapsed()
    );

    // Edges behind NAT are members in gossip like the others: the voters
    // reach them over the connections they dial, and keep seeing them alive.
    let gossip_states = |i: usize| -> std::collections::BTreeMap<String, String> {
        let listed = common::fleet::json(ok(edgeconf(
            fleet.cluster.agents[i].as_ref().unwrap(),
            &["-w", "json", "member", "list"],
        )));
        listed["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let field = |f: &str| m[f].as_str().unwrap_or_default().to_string();
                (field("name"), field("state"))
            })
            .collect()
    };
    let all_alive = |i: usize| {
        let states = gossip_states(i);
        (0..VOTERS + EDGES)
            .all(|n| states.get(&format!("n{}", n + 1)).map(String::as_str) == Some("alive"))
    };
    let watchers = || (0..VOTERS).chain(BEHIND_NAT);
    let took = wait_until(
        "the voters and the edges behind NAT see every member alive",
        TIMEOUT,
        || watchers().all(all_alive),
    );
    eprintln!(
        "voters and edges behind NAT saw all {} members alive {took:?} after the first put",
        VOTERS + EDGES
    );
    std::thread::sleep(Duration::from_secs(5));
    for voter in 0..VOTERS {
        assert!(
            all_alive(voter),
            "n{}: {:?}",
            voter + 1,
            gossip_states(voter)
        );
        let log = fleet.cluster.agents[voter].as_ref().unwrap().log();
        assert!(!log.contains("member dead"), "n{}:\n{log}", voter + 1);
    }
    // Which agents' processes still run (for a failure message).
    let processes = || -> Vec<String> {
        (0..VOTERS + EDGES)
            .filter_map(|i| {
                let agent = fleet.cluster.agents[i].as_ref()?;
                Some(format!("n{}: {}", i + 1, agent.proc_state()))
            })
            .collect()
    };
    for edge in BEHIND_NAT {
        assert!(
            all_alive(edge),
            "n{}: {:?}\n{}",
            edge + 1,
            gossip_states(edge),
            processes().join("\n")
        );
        let log = fleet.cluster.agents[edge].as_ref().unwrap().log();
        assert!(!log.contains("member dead"), "n{}:\n{log}", edge + 1);
    }

    // An edge goes away; the leader is killed while writes stream in, and
    // a relaying edge (a root of the tree: the first by name) too.
    let away = VOTERS + EDGES - 1;
    fleet.cluster.kill9(away);
    let leader = fleet.cluster.wait_for_leader();
    let endpoints = fleet.voter_endpoints();
    let writer = std::thread::spawn(move || puts(endpoints, 1000, "after-1000"));
    std::thread::sleep(Duration::from_millis(500));
    fleet.cluster.kill9(leader);
    fleet.cluster.kill9(VOTERS);
    writer.join().unwrap();
    let took = fleet.converge("after-1000", "every running edge converges after the kills");
    eprintln!("1,000 writes with the leader and a relay killed: running edges converged {took:?} after the last write");

    // The edge that was away for the 1,000 writes catches up, with only one
    // voter left up.
    fleet.cluster.kill9(0);
    let back = Instant::now();
    fleet.cluster.run(away);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.file(away).as_deref() != Some("after-1000") {
        assert!(
            Instant::now() < deadline,
            "the returning edge did not catch up:\n{}",
            fleet.cluster.agents[away].as_ref().unwrap().log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "an edge away for 1,000 writes caught up {:?} after its start",
        back.elapsed()
    );

    // Every voter down: an edge started now renders from its own store.
    for i in 0..VOTERS {
        fleet.cluster.kill9(i);
    }
    let offline = VOTERS + 5;
    fleet.cluster.kill9(offline);
    std::fs::remove_file(&fleet.files[offline]).unwrap();
    let booted = Instant::now();
    fleet.cluster.run(offline);
    wait_until("the offline edge renders", Duration::from_secs(10), || {
        fleet.file(offline).as_deref() == Some("after-1000")
    });
    let took = booted.elapsed();
    eprintln!("edge booted with every voter down rendered its file {took:?} after spawn");
    assert!(
        took < Duration::from_secs(2),
        "offline render took {took:?}"
    );
    // It serves serializable reads from its store (a linearizable read is a
    // voter's to answer, and none is up), and says it is stale.
    let agent = fleet.cluster.agents[offline].as_ref().unwrap();
    let got = ok(edgeconf(
        agent,
        &[
            "get",
            "/app/config",
            "--print-value-only",
            "--consistency",
            "s",
        ],
    ));
    assert_eq!(got, "after-1000\n");
    assert!(!edgeconf(agent, &["get", "/app/config"]).status.success());
    let status = ok(edgeconf(agent, &["-w", "json", "status"]));
    assert!(
        status.contains("stale: no voter timestamp verified"),
        "{status}"
    );
}

/// `[peer_trust] keys` reload on SIGHUP: an edge struck off the voters'
/// keys loses its connections at once and gets nothing new (what it has
/// stays); listed again, it catches up.
#[test]
fn peer_trust_reloads_on_sighup_and_a_key_struck_off_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 4);
    let seeds: Vec<String> = cluster.slots[..3]
        .iter()
        .map(|slot| format!("{:?}", slot.peer_url.trim_start_matches("quic://")))
        .collect();
    for i in 0..4 {
        cluster.member_head[i] = if i < 3 {
            "role = \"voter\"".to_string()
        } else {
            "role = \"edge\"\nsync = [\"/app/\"]".to_string()
        };
        cluster.member_config[i] = format!(
            "[gossip]\nseeds = [{}]\nprobe_interval = \"300ms\"\nprobe_timeout = \"150ms\"\n",
            seeds.join(", ")
        );
    }
    let edge_key = format!(", {:?}", cluster.slots[3].key);
    let initial = cluster.initial_cluster(0..3);
    let write_voters = |cluster: &Cluster, trust_edge: bool| {
        for i in 0..3 {
            cluster.write_config(i, &initial, "new");
            if !trust_edge {
                let path = cluster.config_path(i);
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(text.contains(&edge_key));
                std::fs::write(&path, text.replace(&edge_key, "")).unwrap();
            }
        }
    };
    let sighup_voters = |cluster: &Cluster, times: usize| {
        for i in 0..3 {
            let agent = cluster.agents[i].as_ref().unwrap();
            agent.signal("HUP");
            wait_until("the voter reloads [peer_trust]", TIMEOUT, || {
                agent.log().matches("reloaded [peer_trust]").count() >= times
            });
        }
    };
    write_voters(&cluster, true);
    for i in 0..3 {
        cluster.run(i);
    }
    let leader = cluster.wait_for_leader();
    let own = cluster.initial_cluster(3..4);
    cluster.write_config(3, &own, "new");
    cluster.run(3);
    let voter = cluster.agents[leader].as_ref().unwrap();
    let edge = cluster.agents[3].as_ref().unwrap();
    let local = |key: &str| {
        ok(edgeconf(
            edge,
            &["get", key, "--print-value-only", "--consistency", "s"],
        ))
    };
    ok(edgeconf(voter, &["put", "/app/x", "1"]));
    wait_until("the trusted edge follows", TIMEOUT, || {
        local("/app/x") == "1\n"
    });

    write_voters(&cluster, false);
    sighup_voters(&cluster, 1);
    let closed: usize = (0..3)
        .map(|i| {
            let log = cluster.agents[i].as_ref().unwrap().log();
            let line = log
                .lines()
                .rfind(|l| l.contains("reloaded [peer_trust]"))
                .unwrap()
                .to_string();
            line.split("closed_connections=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no count in {line}"))
        })
        .sum();
    assert!(closed >= 1, "no connection of the edge was closed");
    ok(edgeconf(voter, &["put", "/app/y", "2"]));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(local("/app/y"), "", "a key struck off still got the feed");
    assert_eq!(local("/app/x"), "1\n", "what the edge had stays");
    wait_until("the voters refuse the edge's handshakes", TIMEOUT, || {
        voter.log().contains("not in peer_trust.keys")
    });

    write_voters(&cluster, true);
    sighup_voters(&cluster, 2);
    wait_until("the edge catches up once listed again", TIMEOUT, || {
        local("/app/y") == "2\n"
    });
}
