//! Staged rollouts on a real fleet: 3 voters and 6 edge agents on
//! loopback, each rendering `/app/config` into a file that a small local
//! service reads, with an HTTP health check of that service. A good change
//! advances through every stage; a bad one (the service fails on it) is
//! rolled back by itself; the leader dies in the middle of one; plain
//! writes and second rollouts of the key are refused; `put --force` wins.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::fleet::{agent, fleet_with, http_get, json, wait_until, HttpStub};
use common::{edgeconf, failed, ok};
use serde_json::Value;

const AGENTS: usize = 9;
const EDGES: usize = 6;
const TIMEOUT: Duration = Duration::from_secs(90);

/// A local service that reads its config file on every request: healthy
/// unless the file says `bad`.
fn app(config: PathBuf) -> HttpStub {
    HttpStub::start(move || {
        let content = std::fs::read_to_string(&config).unwrap_or_default();
        if content.contains("bad") {
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10\r\nconnection: close\r\n\r\nbad config"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        }
    })
}

struct Fleet {
    cluster: Cluster,
    files: Vec<PathBuf>,
    operator_key: PathBuf,
    metrics_ports: Vec<u16>,
    _apps: Vec<HttpStub>,
}

impl Fleet {
    fn start(dir: &Path) -> Fleet {
        let operator_key = dir.join("operator.key");
        let public = common::keygen(&operator_key);
        let (mut files, mut metrics_ports) = (Vec::new(), Vec::new());
        let (mut extra, mut head, mut apps) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..AGENTS {
            let out = dir.join(format!("out{}", i + 1));
            std::fs::create_dir_all(&out).unwrap();
            let file = out.join("app.conf");
            let app = app(file.clone());
            let metrics = common::free_port();
            head.push(format!(
                "render_root = {:?}\nlisten_metrics_url = \"http://127.0.0.1:{metrics}\"",
                out.display().to_string()
            ));
            metrics_ports.push(metrics);
            extra.push(format!(
                "[trust]\nkeys = [{public:?}]\n[[trust.prefix]]\nprefix = \"/app/\"\n\n\
                 [[render]]\nkey = \"/app/config\"\ndest = {:?}\n\n\
                 [[service]]\nname = \"app\"\nport = {}\n\
                 [[service.check]]\nhttp = \"http://127.0.0.1:{}/health\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
                file.display().to_string(),
                app.port,
                app.port
            ));
            files.push(file);
            apps.push(app);
        }
        let labels = |i: usize| {
            if i < 3 {
                "tier = \"core\"".to_string()
            } else {
                "tier = \"edge\"".to_string()
            }
        };
        let gossip = "probe_interval = \"500ms\"\nprobe_timeout = \"200ms\"";
        let cluster = fleet_with(dir, EDGES, labels, gossip, &extra, &head);
        Fleet {
            cluster,
            files,
            operator_key,
            metrics_ports,
            _apps: apps,
        }
    }

    fn cli(&self, i: usize, args: &[&str]) -> std::process::Output {
        edgeconf(agent(&self.cluster, i), args)
    }

    /// The rollout's status as agent `i` reports it.
    fn status(&self, i: usize, id: &str) -> Value {
        let output = self.cli(i, &["-w", "json", "rollout", "status", id]);
        if !output.status.success() {
            let log = agent(&self.cluster, i).log();
            eprintln!("agent {i}: {}", agent(&self.cluster, i).proc_state());
            let port = agent(&self.cluster, i).port;
            let direct = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(2),
            );
            eprintln!("agent {i}: a direct connect to {port}: {direct:?}");
            let listening = std::process::Command::new("ss").args(["-ltnp"]).output();
            if let Ok(out) = listening {
                let text = String::from_utf8_lossy(&out.stdout);
                let mine: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(&format!(":{port} ")))
                    .collect();
                eprintln!("agent {i}: listening on {port}: {mine:?}");
            }
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "rollout status on agent {i} failed: {}\n--- the end of its log ---\n{}",
                String::from_utf8_lossy(&output.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        json(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `rollout start` of `value` on agent `i`, signed, with `flags`.
    fn rollout_start(&self, i: usize, value: &str, flags: &[&str]) -> std::process::Output {
        let key = self.operator_key.to_str().unwrap();
        let mut args = vec![
            "-w",
            "json",
            "rollout",
            "start",
            "--key",
            "/app/config",
            "--sign-key",
            key,
            "--value",
            value,
        ];
        args.extend_from_slice(flags);
        self.cli(i, &args)
    }

    /// Starts a rollout of `value` on agent `i`; its id.
    fn start_rollout(&self, i: usize, value: &str, flags: &[&str]) -> String {
        json(ok(self.rollout_start(i, value, flags)))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn contents(&self, agents: impl Iterator<Item = usize>) -> Vec<String> {
        agents
            .map(|i| std::fs::read_to_string(&self.files[i]).unwrap_or_default())
            .collect()
    }

    fn count_with(&self, text: &str) -> usize {
        self.contents(0..AGENTS)
            .iter()
            .filter(|c| c.as_str() == text)
            .count()
    }

    fn running(&self) -> Vec<usize> {
        self.cluster.running()
    }

    /// Waits until `count` apps are healthy (a rollout started while the
    /// last one's failures still show would count them against itself).
    fn wait_healthy(&self, count: usize) {
        wait_until("the apps are healthy", TIMEOUT, || {
            let listed = json(ok(self.cli(
                self.running()[0],
                &["-w", "json", "service", "list", "app", "--healthy"],
            )));
            listed["instances"].as_array().map_or(0, Vec::len) == count
        });
    }

    /// Waits until rollout `id` leaves running/paused; its final status.
    fn wait_finished(&self, i: usize, id: &str) -> Value {
        let mut last = Value::Null;
        let mut polls = 0;
        wait_until("the rollout finishes", TIMEOUT, || {
            last = self.status(i, id);
            polls += 1;
            if polls % 30 == 0 {
                eprintln!(
                    "still waiting: stage {} counts {} pending {} failing {}",
                    last["stage"], last["counts"], last["pending"], last["failing"]
                );
            }
            !matches!(last["status"].as_str(), Some("running" | "paused"))
        });
        last
    }
}

#[test]
fn staged_rollouts_advance_roll_back_and_survive_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(dir.path());
    let sign_key = fleet.operator_key.to_str().unwrap().to_string();
    ok(fleet.cli(
        0,
        &["put", "--sign-key", &sign_key, "/app/config", "version=1"],
    ));
    wait_until("every agent renders version 1", TIMEOUT, || {
        fleet.count_with("version=1") == AGENTS
    });
    fleet.wait_healthy(AGENTS);

    // 1. A good change: stage by stage to every agent, then stored.
    let started = Instant::now();
    let id = fleet.start_rollout(
        1,
        "version=2",
        &[
            "--stages",
            "20,50,100",
            "--gate",
            "2s",
            "--max-unhealthy",
            "0%",
        ],
    );
    // While the first stage holds its gate, only its agents have version 2.
    let mut first_stage = 0;
    wait_until("the first stage's gate runs", TIMEOUT, || {
        let status = fleet.status(0, &id);
        if status["stage"] == 1 && !status["gate_started_unix_ms"].is_null() {
            first_stage = status["counts"]["in_stage"].as_u64().unwrap() as usize;
            return true;
        }
        false
    });
    assert!(
        (1..AGENTS).contains(&first_stage),
        "20% of 9 agents: {first_stage}"
    );
    assert_eq!(fleet.count_with("version=2"), first_stage);
    let staged = format!("edgeconf_rollout_staged{{rollout=\"{id}\"}} 1");
    let reporting = fleet
        .metrics_ports
        .iter()
        .filter(|port| http_get(**port, "/metrics").contains(&staged))
        .count();
    assert_eq!(
        reporting, first_stage,
        "agents whose /metrics show {staged}"
    );
    // The key is locked meanwhile: no plain write, no second rollout.
    let refused = failed(fleet.cli(
        2,
        &["put", "--sign-key", &sign_key, "/app/config", "version=9"],
    ));
    assert!(
        refused.contains(&format!("being rolled out by rollout {id}")),
        "{refused}"
    );
    let conflict = failed(fleet.rollout_start(3, "version=8", &[]));
    assert!(
        conflict.contains(&format!("already being rolled out by rollout {id}")),
        "{conflict}"
    );
    let done = fleet.wait_finished(4, &id);
    let good_took = started.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    wait_until("every file has version 2", TIMEOUT, || {
        fleet.count_with("version=2") == AGENTS
    });
    let stored = ok(fleet.cli(5, &["get", "/app/config", "--print-value-only"]));
    assert_eq!(stored.trim(), "version=2");
    let events: Vec<String> = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("stage 2 of 3 (50%) opened")),
        "{events:?}"
    );
    eprintln!("good change, stages 20,50,100 with 2 s gates: start to every file in {good_took:?}");

    // 2. A bad change: the canaries' app fails on it, and it is rolled
    // back everywhere by itself.
    let started = Instant::now();
    let id = fleet.start_rollout(
        0,
        "version=3 bad",
        &["--stages", "20,50,100", "--gate", "5s"],
    );
    let done = fleet.wait_finished(2, &id);
    let decided = started.elapsed();
    assert_eq!(done["status"], "rolled_back", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(
        reason.contains("stage 1 of 3") && reason.contains("service app critical"),
        "{reason}"
    );
    wait_until("every file is back on version 2", TIMEOUT, || {
        fleet.count_with("version=2") == AGENTS
    });
    let restored = started.elapsed();
    let stored = ok(fleet.cli(0, &["get", "/app/config", "--print-value-only"]));
    assert_eq!(stored.trim(), "version=2");
    eprintln!(
        "bad change: rolled back {decided:?} after start; every file restored {restored:?} after start"
    );
    // Its signed value, taken from the stored plan, cannot be written
    // directly (it would skip every gate).
    let plan = json(ok(fleet.cli(
        0,
        &[
            "get",
            &format!("_edgeconf/rollout/plan/{id}"),
            "--print-value-only",
        ],
    )));
    let body = json(plan["body"].as_str().unwrap().to_string());
    let change = dir.path().join("rolled-back.json");
    std::fs::write(&change, body["change"].as_str().unwrap()).unwrap();
    let replay = failed(fleet.cli(1, &["put", "--signed", change.to_str().unwrap()]));
    assert!(replay.contains("did not complete"), "{replay}");
    // A selector that matches nobody is refused.
    let nobody = failed(fleet.rollout_start(0, "x", &["--selector", "tier=nope"]));
    assert!(nobody.contains("matches no agent"), "{nobody}");
    let simple = ok(fleet.cli(3, &["rollout", "status", &id]));
    assert!(
        simple.contains("rolled_back") && simple.contains("agents:"),
        "{simple}"
    );

    // 3. The leader dies in the middle of a rollout of the edges; a new
    // leader finishes it. An edge down from the start is not held against
    // the change, and converges when it comes back, like the old leader.
    fleet.wait_healthy(AGENTS);
    fleet.cluster.kill9(8);
    let id = fleet.start_rollout(
        3,
        "version=4",
        &[
            "--selector",
            "tier=edge",
            "--stages",
            "34,67,100",
            "--gate",
            "2s",
        ],
    );
    wait_until("the rollout reaches its second stage", TIMEOUT, || {
        let status = fleet.status(3, &id);
        assert_eq!(status["status"], "running", "{status}");
        status["stage"] == 2
    });
    // Voters are not selected: none renders version 4 before the end.
    assert!(fleet.contents(0..3).iter().all(|c| c == "version=2"));
    let leader = fleet.cluster.wait_for_leader();
    fleet.cluster.kill9(leader);
    let killed_at = Instant::now();
    let done = fleet.wait_finished(4, &id);
    assert_eq!(done["status"], "completed", "{done}");
    eprintln!(
        "leader killed at stage 2: the rollout completed {:?} later",
        killed_at.elapsed()
    );
    wait_until("every running agent has version 4", TIMEOUT, || {
        fleet
            .running()
            .iter()
            .all(|&i| std::fs::read_to_string(&fleet.files[i]).unwrap_or_default() == "version=4")
    });
    for i in [leader, 8] {
        fleet.cluster.run(i);
    }
    wait_until(
        "the restarted agents converge on version 4",
        TIMEOUT,
        || fleet.count_with("version=4") == AGENTS,
    );

    // 4. Pause, resume, and a forced write that aborts a rollout.
    let id = fleet.start_rollout(4, "version=5", &["--stages", "50,100", "--gate", "30s"]);
    let paused = json(ok(fleet.cli(0, &["-w", "json", "rollout", "pause", &id])));
    assert_eq!(paused["status"], "paused");
    let again = failed(fleet.cli(0, &["rollout", "pause", &id]));
    assert!(again.contains("is paused: it cannot be paused"), "{again}");
    ok(fleet.cli(0, &["rollout", "resume", &id]));
    wait_until("the first stage renders version 5", TIMEOUT, || {
        fleet.count_with("version=5") > 0
    });
    ok(fleet.cli(
        5,
        &[
            "put",
            "--force",
            "--sign-key",
            &sign_key,
            "/app/config",
            "version=6",
        ],
    ));
    let aborted = fleet.status(1, &id);
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert!(aborted["reason"].as_str().unwrap().contains("forced write"));
    wait_until("every file has the forced version 6", TIMEOUT, || {
        fleet.count_with("version=6") == AGENTS
    });

    // 5. Promote: straight to the last stage; its gate still applies.
    let id = fleet.start_rollout(6, "version=7", &["--stages", "10,50,100", "--gate", "1s"]);
    let promoted = json(ok(fleet.cli(1, &["-w", "json", "rollout", "promote", &id])));
    assert_eq!(promoted["stage"], 3, "{promoted}");
    let done = fleet.wait_finished(1, &id);
    assert_eq!(done["status"], "completed", "{done}");
    wait_until("every file has the promoted version 7", TIMEOUT, || {
        fleet.count_with("version=7") == AGENTS
    });

    // History: every rollout, oldest first.
    let history = json(ok(fleet.cli(2, &["-w", "json", "rollout", "list"])));
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "completed",
            "rolled_back",
            "completed",
            "aborted",
            "completed"
        ]
    );
    let table = ok(fleet.cli(2, &["-w", "table", "rollout", "list"]));
    assert!(
        table.contains("rolled_back") && table.contains("/app/config"),
        "{table}"
    );
    // Edgeconf's own records cannot be written by clients.
    let reserved = failed(fleet.cli(0, &["put", "_edgeconf/rollout/x", "y"]));
    assert!(reserved.contains("edgeconf's own"), "{reserved}");
    for i in fleet.running() {
        fleet.cluster.stop(i);
    }
}
