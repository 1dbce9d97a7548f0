//! The fleet with real agents on loopback: gossip membership (join, leave,
//! kill -9), edge agents receiving config through the voters' feed, and services
//! whose health travels by gossip into discovery and rendered files.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::Cluster;
use common::fleet::{agent, fleet, http_get, json, wait_until, HttpStub, TIMEOUT};
use common::{edgeconf, etcdctl, ok};
use serde_json::Value;

/// `member list -w json` on agent `i`: name -> member.
fn members(cluster: &Cluster, i: usize) -> std::collections::BTreeMap<String, Value> {
    let listed = json(ok(edgeconf(
        agent(cluster, i),
        &["-w", "json", "member", "list"],
    )));
    listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m.clone()))
        .collect()
}

fn states(cluster: &Cluster, i: usize) -> Vec<(String, String)> {
    members(cluster, i)
        .into_iter()
        .map(|(name, m)| (name, m["state"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn agents_join_edges_get_config_leave_and_kill_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let sync = "sync = [\"/app/\"]".to_string();
    let head = [
        String::new(),
        String::new(),
        String::new(),
        sync.clone(),
        sync,
    ];
    let mut cluster = fleet(dir.path(), 2, "", &[], &head);
    let names = ["n1", "n2", "n3", "n4", "n5"];

    // Every agent sees all five alive, with their roles and labels.
    for i in 0..5 {
        wait_until("every agent sees five alive members", TIMEOUT, || {
            let seen = states(&cluster, i);
            seen.len() == 5 && seen.iter().all(|(_, state)| state == "alive")
        });
    }
    let seen = members(&cluster, 4);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    assert_eq!(seen["n1"]["role"], "voter");
    assert_eq!(seen["n1"]["labels"]["region"], "eu");
    assert_eq!(seen["n4"]["role"], "edge");
    assert_eq!(seen["n4"]["labels"]["tier"], "canary");
    assert_eq!(seen["n4"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(seen["n5"]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let table = ok(edgeconf(agent(&cluster, 0), &["member", "list"]));
    assert!(table.contains("region=us,tier=canary"), "{table}");

    // Edge agents are not raft members: they follow the voters' feed,
    // serve what they keep (`sync = ["/app/"]`) and forward writes.
    ok(edgeconf(agent(&cluster, 1), &["put", "/app/mode", "fast"]));
    for edge in [3, 4] {
        wait_until("the edge serves the value", TIMEOUT, || {
            let got = edgeconf(
                agent(&cluster, edge),
                &["get", "/app/mode", "--consistency", "s"],
            );
            ok(got).contains("fast")
        });
    }
    ok(edgeconf(agent(&cluster, 3), &["put", "/app/mode", "slow"]));
    let got = ok(edgeconf(agent(&cluster, 0), &["get", "/app/mode"]));
    assert!(got.contains("slow"), "{got}");
    let listed = ok(etcdctl(agent(&cluster, 0), &["member", "list"]));
    assert_eq!(
        listed.lines().count(),
        3,
        "only the voters are raft members: {listed}"
    );

    // A healthy fleet has no false suspicions.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..5 {
        let log = agent(&cluster, i).log();
        assert!(
            !log.contains("member suspect") && !log.contains("member dead"),
            "n{} suspected a healthy member:\n{log}",
            i + 1
        );
    }

    // A graceful leave: left, not dead, everywhere; and out of raft.
    ok(edgeconf(agent(&cluster, 4), &["member", "leave"]));
    wait_until("n5 exits after leaving", TIMEOUT, || {
        cluster.agents[4].as_mut().unwrap().exited()
    });
    cluster.agents[4] = None;
    for i in 0..4 {
        wait_until("n5 is seen as left", TIMEOUT, || {
            members(&cluster, i)["n5"]["state"] == "left"
        });
    }

    // kill -9: dead everywhere within seconds.
    cluster.kill9(3);
    let took = wait_until("n4 is dead to every agent", TIMEOUT, || {
        (0..3).all(|i| members(&cluster, i)["n4"]["state"] == "dead")
    });
    eprintln!("kill -9 of n4 detected by every agent in {took:?}");
    assert!(took < Duration::from_secs(15), "detection took {took:?}");
    for i in 0..3 {
        assert_eq!(members(&cluster, i)["n5"]["state"], "left");
    }

    // It comes back: alive again, and it refutes its death.
    cluster.run(3);
    wait_until("n4 is alive again", TIMEOUT, || {
        (0..3).all(|i| members(&cluster, i)["n4"]["state"] == "alive")
    });
    for i in 0..4 {
        cluster.stop(i);
    }
}

/// A tiny HTTP server that answers 200 "ok" while `up`, 503 otherwise.
/// A backend whose health endpoint answers 200 "ok" while `up`, 503
/// otherwise.
struct Backend {
    port: u16,
    up: Arc<AtomicBool>,
    _stub: HttpStub,
}

impl Backend {
    fn start() -> Backend {
        let up = Arc::new(AtomicBool::new(true));
        let serving = up.clone();
        let stub = HttpStub::start(move || {
            if serving.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            } else {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown"
            }
        });
        Backend {
            port: stub.port,
            up,
            _stub: stub,
        }
    }
}

fn instances(cluster: &Cluster, i: usize, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-w", "json", "service", "list"];
    all.extend_from_slice(args);
    json(ok(edgeconf(agent(cluster, i), &all)))["instances"]
        .as_array()
        .unwrap()
        .clone()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|i| {
            format!(
                "{}@{}",
                i["id"].as_str().unwrap(),
                i["node"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn service_health_flows_to_discovery_and_rendered_upstreams() {
    let dir = tempfile::tempdir().unwrap();
    let (web_a, web_b) = (Backend::start(), Backend::start());
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let template = dir.path().join("upstream.j2");
    std::fs::write(
        &template,
        "upstream web {\n{% for s in healthy %}    server {{ s.address }}:{{ s.port }};\n{% else %}    server 127.0.0.1:1 down;\n{% endfor %}}\n",
    )
    .unwrap();
    let service = |port: u16, tag: &str| {
        format!(
            "[[service]]\nname = \"web\"\nid = \"web-{port}\"\nport = {port}\ntags = [{tag:?}]\n\
             [[service.check]]\nhttp = \"http://127.0.0.1:{port}/health\"\nexpect_body = \"ok\"\n\
             interval = \"200ms\"\ntimeout = \"1s\"\n"
        )
    };
    let render = format!(
        "[[render]]\nservice = \"web\"\ntemplate = {:?}\ndest = {:?}\n",
        template.display().to_string(),
        out.join("upstream.conf").display().to_string()
    );
    // n1 renders the upstream; the edges n4 and n5 run one instance each.
    let extra = vec![
        render,
        String::new(),
        String::new(),
        service(web_a.port, "blue"),
        service(web_b.port, "green"),
    ];
    let gossip = "probe_interval = \"500ms\"\nprobe_timeout = \"200ms\"";
    let metrics_port = common::free_port();
    let mut head = vec![String::new(); 5];
    head[0] = format!("render_root = {:?}", out.display().to_string());
    head[3] = format!("listen_metrics_url = \"http://127.0.0.1:{metrics_port}\"");
    let mut cluster = fleet(dir.path(), 2, gossip, &extra, &head);
    let upstream = out.join("upstream.conf");
    let a = format!("server 127.0.0.1:{};", web_a.port);
    let b = format!("server 127.0.0.1:{};", web_b.port);
    let file = || std::fs::read_to_string(&upstream).unwrap_or_default();

    // Both healthy: discovered from any agent, and in the rendered file.
    wait_until("both instances are healthy on n2", TIMEOUT, || {
        instances(&cluster, 1, &["web", "--healthy"]).len() == 2
    });
    wait_until("both instances are in the upstream file", TIMEOUT, || {
        file().contains(&a) && file().contains(&b)
    });
    let green = instances(&cluster, 0, &["--tag", "green"]);
    assert_eq!(ids(&green), vec![format!("web-{}@n5", web_b.port)]);
    let metrics = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("edgeconf_gossip_members{state=\"alive\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "edgeconf_service_check_status{{service=\"web-{}\",check=\"http http://127.0.0.1:{}/health\"}} 0",
            web_a.port, web_a.port
        )),
        "{metrics}"
    );

    // One goes down: critical, out of --healthy and out of the file.
    web_a.up.store(false, Ordering::SeqCst);
    let took = wait_until("web-a is critical everywhere", TIMEOUT, || {
        (0..3).all(|i| {
            instances(&cluster, i, &["web"])
                .iter()
                .any(|s| s["port"] == web_a.port && s["health"] == "critical")
        })
    });
    eprintln!("a failing check reached every voter in {took:?}");
    let healthy = instances(&cluster, 2, &["web", "--healthy"]);
    assert_eq!(ids(&healthy), vec![format!("web-{}@n5", web_b.port)]);
    wait_until("web-a leaves the upstream file", TIMEOUT, || {
        !file().contains(&a) && file().contains(&b)
    });
    let critical = instances(&cluster, 0, &["web"]);
    let output = critical.iter().find(|s| s["port"] == web_a.port).unwrap()["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(output.contains("503"), "{output}");

    // Back up: restored.
    web_a.up.store(true, Ordering::SeqCst);
    wait_until("web-a is healthy again", TIMEOUT, || {
        instances(&cluster, 0, &["web", "--healthy"]).len() == 2
    });
    wait_until("web-a is back in the upstream file", TIMEOUT, || {
        file().contains(&a) && file().contains(&b)
    });

    // API registration with a ttl check: critical until it reports, then
    // passing, then critical again when the reports stop.
    let edge = agent(&cluster, 3);
    ok(edgeconf(
        edge,
        &[
            "service", "register", "jobs", "--port", "9000", "--ttl", "2s",
        ],
    ));
    let health = |c: &Cluster| {
        instances(c, 0, &["jobs"])
            .first()
            .map(|s| s["health"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    wait_until("jobs is critical before any pass", TIMEOUT, || {
        health(&cluster) == "critical"
    });
    ok(edgeconf(
        edge,
        &["service", "pass", "jobs", "--note", "working"],
    ));
    wait_until("jobs passes", TIMEOUT, || health(&cluster) == "passing");
    wait_until("jobs is critical once its ttl runs out", TIMEOUT, || {
        health(&cluster) == "critical"
    });
    let err = common::failed(edgeconf(edge, &["service", "pass", "nope"]));
    assert!(err.contains("no service \"nope\""), "{err}");
    let err = common::failed(edgeconf(
        edge,
        &["service", "deregister", &format!("web-{}", web_a.port)],
    ));
    assert!(err.contains("config file"), "{err}");
    let err = common::failed(edgeconf(
        edge,
        &["service", "register", "bad name", "--port", "1"],
    ));
    assert!(err.contains("name"), "{err}");
    ok(edgeconf(edge, &["service", "deregister", "jobs"]));
    wait_until("jobs is gone", TIMEOUT, || {
        instances(&cluster, 0, &["jobs"]).is_empty()
    });

    // The agent of web-b dies: its instance vanishes from discovery and
    // from the file.
    cluster.kill9(4);
    wait_until("web-b vanishes with its agent", TIMEOUT, || {
        ids(&instances(&cluster, 0, &["web"])) == vec![format!("web-{}@n4", web_a.port)]
    });
    wait_until("web-b leaves the upstream file", TIMEOUT, || {
        file().contains(&a) && !file().contains(&b)
    });
    for i in 0..4 {
        cluster.stop(i);
    }
}
