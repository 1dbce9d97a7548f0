//! Compatibility: Debian's `etcdctl` (package etcd-client, API v3) works
//! unchanged against an agent. `./setup.sh` installs it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{etcdctl, ok, run_with_timeout, stderr, stdout, Agent};

fn require_etcdctl() {
    let found = Command::new("etcdctl").arg("version").output().is_ok();
    assert!(
        found,
        "etcdctl is not installed: run ./setup.sh (installs Debian's etcd-client)"
    );
}

#[test]
fn etcdctl_put_get_prefix_rev_json_and_del() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    assert_eq!(ok(etcdctl(&agent, &["put", "/app/a", "1"])), "OK\n");
    ok(etcdctl(&agent, &["put", "/app/a", "2"]));
    ok(etcdctl(&agent, &["put", "/app/b", "3"]));
    assert_eq!(
        ok(etcdctl(&agent, &["get", "/app/", "--prefix"])),
        "/app/a\n2\n/app/b\n3\n"
    );
    assert_eq!(
        ok(etcdctl(&agent, &["get", "/app/a", "--rev", "1"])),
        "/app/a\n1\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(etcdctl(&agent, &["get", "/app/a", "-w", "json"]))).unwrap();
    assert_eq!(json["kvs"][0]["version"], 2);
    assert_eq!(json["kvs"][0]["value"], "Mg==");
    assert_eq!(json["header"]["revision"], 3);
    assert_eq!(ok(etcdctl(&agent, &["del", "/app/", "--prefix"])), "2\n");
    assert_eq!(ok(etcdctl(&agent, &["get", "/app/", "--prefix"])), "");
}

#[test]
fn etcdctl_watch_replays_from_a_revision() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(etcdctl(&agent, &["put", "/w/a", "1"]));
    ok(etcdctl(&agent, &["put", "/w/b", "2"]));
    let endpoint = agent.endpoint();
    let watcher = std::thread::spawn(move || {
        run_with_timeout(
            Command::new("etcdctl").env("ETCDCTL_API", "3").args([
                "--endpoints",
                &endpoint,
                "watch",
                "--prefix",
                "/w/",
                "--rev",
                "1",
            ]),
            Duration::from_secs(4),
        )
    });
    std::thread::sleep(Duration::from_millis(1500));
    ok(etcdctl(&agent, &["put", "/w/c", "3"]));
    let output = watcher.join().unwrap();
    assert_eq!(
        stdout(&output),
        "PUT\n/w/a\n1\nPUT\n/w/b\n2\nPUT\n/w/c\n3\n"
    );
}

#[test]
fn etcdctl_txn_lease_compaction_and_endpoint_status() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(etcdctl(&agent, &["put", "flag", "on"]));

    assert_eq!(
        etcdctl_txn(
            &agent.endpoint(),
            "value(\"flag\") = \"on\"\n\nput result yes\n\nput result no\n\n"
        ),
        "SUCCESS\n\nOK\n"
    );
    assert_eq!(
        ok(etcdctl(&agent, &["get", "result", "--print-value-only"])),
        "yes\n"
    );

    let granted = ok(etcdctl(&agent, &["lease", "grant", "60"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    ok(etcdctl(&agent, &["put", "leased", "v", "--lease", &id]));
    let kept = ok(etcdctl(&agent, &["lease", "keep-alive", "--once", &id]));
    assert!(kept.contains("keepalived with TTL(60)"), "{kept}");
    ok(etcdctl(&agent, &["lease", "revoke", &id]));
    assert_eq!(ok(etcdctl(&agent, &["get", "leased"])), "");

    assert_eq!(
        ok(etcdctl(&agent, &["compaction", "2"])),
        "compacted revision 2\n"
    );
    let old = etcdctl(&agent, &["get", "flag", "--rev", "1"]);
    assert!(!old.status.success());
    assert!(
        stderr(&old).contains("required revision has been compacted"),
        "{}",
        stderr(&old)
    );

    let status = ok(etcdctl(&agent, &["endpoint", "status", "-w", "json"]));
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    let s = &json[0]["Status"];
    assert_eq!(s["leader"], s["header"]["member_id"], "{status}");
    assert!(s["raftTerm"].as_u64().unwrap() >= 1, "{status}");
}

/// Runs `etcdctl txn` (interactive) with `script` on its stdin; its stdout.
fn etcdctl_txn(endpoint: &str, script: &str) -> String {
    let output = common::run_with_input(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "txn"]),
        Some(script.as_bytes()),
        Duration::from_secs(30),
    );
    stdout(&output)
}

/// Runs etcdctl against one endpoint, written as given.
fn etcdctl_at(endpoint: &str, args: &[&str]) -> std::process::Output {
    run_with_timeout(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint, "--dial-timeout", "3s"])
            .args(args),
        Duration::from_secs(30),
    )
}

/// etcd's documentation writes endpoints with a scheme, and etcdctl sends
/// some of them on as the request's `:authority` (`endpoint status` with
/// `http://127.0.0.1:2379` sends exactly that): every form must work for
/// every etcdctl command the tests use.
#[test]
fn every_etcdctl_command_works_with_every_endpoint_form() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let urls = format!("http://127.0.0.1:{port},http://[::1]:{port}");
    let agent = Agent::start_with(dir.path(), port, &["--listen-client-urls", &urls]);
    let forms = [
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("http://localhost:{port}"),
        format!("[::1]:{port}"),
        format!("http://[::1]:{port}"),
    ];
    for (n, endpoint) in forms.iter().enumerate() {
        let run = |args: &[&str]| {
            let output = etcdctl_at(endpoint, args);
            assert!(
                output.status.success(),
                "etcdctl --endpoints={endpoint} {args:?} failed: {}\nagent log:\n{}",
                stderr(&output),
                agent.log()
            );
            stdout(&output)
        };
        let key = format!("/forms/{n}");
        assert_eq!(run(&["put", &key, "1"]), "OK\n");
        let status: serde_json::Value =
            serde_json::from_str(&run(&["endpoint", "status", "-w", "json"])).unwrap();
        let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
        assert_eq!(
            status[0]["Status"]["leader"],
            status[0]["Status"]["header"]["member_id"]
        );
        assert!(run(&["endpoint", "status"]).contains(endpoint.as_str()));
        // etcdctl prints health on stderr.
        let health = etcdctl_at(endpoint, &["endpoint", "health"]);
        assert!(health.status.success(), "{}", stderr(&health));
        assert!(
            stderr(&health).contains("is healthy"),
            "{}",
            stderr(&health)
        );
        assert!(!run(&["member", "list"]).is_empty());
        assert_eq!(run(&["put", &key, "2"]), "OK\n");
        assert_eq!(
            run(&[
                "get",
                &key,
                "--rev",
                &revision.to_string(),
                "--print-value-only"
            ]),
            "1\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&run(&["get", &key, "-w", "json"])).unwrap();
        assert_eq!(json["kvs"][0]["version"], 2);
        assert!(run(&["get", "/forms/", "--prefix"]).contains(&key));
        let watched = run_with_timeout(
            Command::new("etcdctl").env("ETCDCTL_API", "3").args([
                "--endpoints",
                endpoint,
                "watch",
                &key,
                "--rev",
                &revision.to_string(),
            ]),
            Duration::from_secs(2),
        );
        // watch runs until killed: the replayed events are what counts.
        assert!(stdout(&watched).starts_with(&format!("PUT\n{key}\n1\nPUT\n{key}\n2\n")));
        let script = format!("value(\"{key}\") = \"2\"\n\nput {key}/txn yes\n\n\n");
        assert_eq!(etcdctl_txn(endpoint, &script), "SUCCESS\n\nOK\n");
        let granted = run(&["lease", "grant", "60"]);
        let id = granted.split_whitespace().nth(1).unwrap().to_string();
        assert!(run(&["lease", "keep-alive", "--once", &id]).contains("TTL(60)"));
        run(&["lease", "revoke", &id]);
        assert_eq!(run(&["del", &key]), "1\n");
        let compact = (revision - 1).max(1).to_string();
        assert!(run(&["compaction", &compact]).contains("compacted revision"));
    }
}

#[test]
fn requests_over_etcds_size_limit_are_refused_as_etcd_refuses_them() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let put = |value: &[u8]| {
        common::run_with_input(
            Command::new("etcdctl").env("ETCDCTL_API", "3").args([
                "--endpoints",
                &agent.endpoint(),
                "put",
                "/big",
            ]),
            Some(value),
            Duration::from_secs(30),
        )
    };
    // 1 MiB fits; 1.6 MiB is over the 1.5 MiB request limit, 3 MiB over
    // what gRPC takes at all. Neither is stored.
    assert_eq!(ok(put(&vec![b'a'; 1 << 20])), "OK\n");
    let over = put(&vec![b'b'; 1600 * 1024]);
    assert!(!over.status.success());
    assert!(
        stderr(&over).contains("request is too large"),
        "{}",
        stderr(&over)
    );
    let huge = put(&vec![b'c'; 3 << 20]);
    assert!(!huge.status.success());
    assert!(
        stderr(&huge).contains("larger than max"),
        "{}",
        stderr(&huge)
    );
    let stored = ok(etcdctl(&agent, &["get", "/big", "--print-value-only"]));
    assert_eq!(stored.len(), (1 << 20) + 1, "the 1 MiB value stays");
}

/// An etcdctl process left running (a lock holder, a candidate, a
/// listener), killed when dropped.
struct Running(std::process::Child);

impl Running {
    fn start(agent: &Agent, args: &[&str], out: &std::path::Path) -> Running {
        let log = std::fs::File::create(out).unwrap();
        let child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(agent.endpoint())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Running(child)
    }

    /// SIGINT, as Ctrl-C: etcdctl unlocks or resigns before it exits.
    fn interrupt(&mut self) {
        let pid = self.0.id().to_string();
        ok(run_with_timeout(
            Command::new("kill").args(["-INT", &pid]),
            Duration::from_secs(5),
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "etcdctl did not exit on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn etcdctl_lock_and_elect_between_two_clients() {
    require_etcdctl();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let d = dir.path();
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();

    // Two clients take one lock: the second runs only after the first let
    // go.
    let order = d.join("order");
    let script = |who: &str| {
        format!(
            "echo {who} >> {0}; sleep 1; echo {who}-done >> {0}",
            order.display()
        )
    };
    let (a, b) = (script("a"), script("b"));
    let mut first = Running::start(
        &agent,
        &["lock", "jobs", "--", "sh", "-c", &a],
        &d.join("a.log"),
    );
    wait_for("a holds the lock", || read("order").contains('a'));
    let mut second = Running::start(
        &agent,
        &["lock", "jobs", "--", "sh", "-c", &b],
        &d.join("b.log"),
    );
    for process in [&mut first, &mut second] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while process.0.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "a lock holder never finished"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(read("order"), "a\na-done\nb\nb-done\n", "{}", read("b.log"));
    // Released: nothing is left under the lock's name.
    let left = ok(etcdctl(
        &agent,
        &["get", "jobs/", "--prefix", "--keys-only"],
    ));
    assert!(left.trim().is_empty(), "{left}");

    // An election: p1 leads, p2 waits, a listener sees p1 and then p2 once
    // p1 resigns.
    let mut p1 = Running::start(&agent, &["elect", "web", "p1"], &d.join("p1.log"));
    wait_for("p1 leads", || read("p1.log").contains("p1"));
    let _p2 = Running::start(&agent, &["elect", "web", "p2"], &d.join("p2.log"));
    let _listener = Running::start(&agent, &["elect", "--listen", "web"], &d.join("listen.log"));
    wait_for("the listener sees p1", || read("listen.log").contains("p1"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !read("p2.log").contains("p2"),
        "p2 led while p1 did: {}",
        read("p2.log")
    );
    p1.interrupt();
    wait_for("p2 leads", || read("p2.log").contains("p2"));
    wait_for("the listener sees p2", || read("listen.log").contains("p2"));
}
