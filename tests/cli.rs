//! The `edgeconf` command line, run as a real binary against a real agent.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{edgeconf, ok, run_with_timeout, stderr, stdout, Agent, BIN};

#[test]
fn put_get_history_rollback_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    assert_eq!(ok(edgeconf(&agent, &["put", "/app/port", "8080"])), "OK\n");
    assert_eq!(ok(edgeconf(&agent, &["put", "/app/port", "9090"])), "OK\n");
    ok(edgeconf(&agent, &["put", "/app/host", "edge-1"]));

    assert_eq!(
        ok(edgeconf(&agent, &["get", "/app/port"])),
        "/app/port\n9090\n"
    );
    assert_eq!(
        ok(edgeconf(&agent, &["get", "/app/", "--prefix"])),
        "/app/host\nedge-1\n/app/port\n9090\n"
    );
    assert_eq!(
        ok(edgeconf(&agent, &["get", "/app/port", "--rev", "1"])),
        "/app/port\n8080\n"
    );
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/", "--prefix", "--limit", "1", "--keys-only"]
        )),
        "/app/host\n"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "get", "/app/port"]))).unwrap();
    assert_eq!(
        json["kvs"][0]["value"], "OTA5MA==",
        "values are base64 as in etcdctl"
    );
    assert_eq!(json["header"]["revision"], 3);

    let history = ok(edgeconf(&agent, &["history", "/app/port", "--values"]));
    let rows: Vec<&str> = history.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert!(
        rows[0].starts_with("1\t1\t") && rows[0].ends_with("PUT\t8080"),
        "{history}"
    );
    assert!(
        rows[1].starts_with("2\t2\t") && rows[1].ends_with("PUT\t9090"),
        "{history}"
    );

    let rolled = ok(edgeconf(
        &agent,
        &["rollback", "/app/port", "--to-rev", "1"],
    ));
    assert!(rolled.contains("new revision 4"), "{rolled}");
    assert_eq!(
        ok(edgeconf(
            &agent,
            &["get", "/app/port", "--print-value-only"]
        )),
        "8080\n"
    );

    assert_eq!(ok(edgeconf(&agent, &["del", "/app/", "--prefix"])), "2\n");
    assert_eq!(ok(edgeconf(&agent, &["get", "/app/", "--prefix"])), "");
}

#[test]
fn put_reads_the_value_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let file = dir.path().join("value.txt");
    std::fs::write(&file, "from a file\n").unwrap();
    ok(edgeconf(
        &agent,
        &["put", "f", "--file", file.to_str().unwrap()],
    ));
    assert_eq!(
        ok(edgeconf(&agent, &["get", "f", "--print-value-only"])),
        "from a file\n\n"
    );

    ok(common::run_with_input(
        Command::new(BIN).args(["--endpoints", &agent.endpoint(), "put", "s"]),
        Some(b"from stdin"),
        Duration::from_secs(30),
    ));
    assert_eq!(
        ok(edgeconf(&agent, &["get", "s", "--print-value-only"])),
        "from stdin\n"
    );
}

#[test]
fn compaction_removes_old_revisions_from_reads_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    for value in ["1", "2", "3"] {
        ok(edgeconf(&agent, &["put", "k", value]));
    }
    assert_eq!(
        ok(edgeconf(&agent, &["compact", "3"])),
        "compacted revision 3\n"
    );
    let old = edgeconf(&agent, &["get", "k", "--rev", "1"]);
    assert_eq!(old.status.code(), Some(1));
    assert!(stderr(&old).contains("compacted"), "{}", stderr(&old));
    assert_eq!(ok(edgeconf(&agent, &["history", "k"])).lines().count(), 2);
    let rollback = edgeconf(&agent, &["rollback", "k", "--to-rev", "1"]);
    assert_eq!(rollback.status.code(), Some(1));
}

#[test]
fn watch_prints_replayed_and_live_events() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(edgeconf(&agent, &["put", "/w/a", "1"]));
    let watcher = std::thread::spawn({
        let endpoint = agent.endpoint();
        move || {
            run_with_timeout(
                Command::new(BIN).args([
                    "--endpoints",
                    &endpoint,
                    "watch",
                    "/w/",
                    "--prefix",
                    "--rev",
                    "1",
                ]),
                Duration::from_secs(4),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    ok(edgeconf(&agent, &["put", "/w/b", "2"]));
    ok(edgeconf(&agent, &["del", "/w/a"]));
    let output = watcher.join().unwrap();
    assert_eq!(
        stdout(&output),
        "PUT\n/w/a\n1\nPUT\n/w/b\n2\nDELETE\n/w/a\n"
    );
}

#[test]
fn leases_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let granted = ok(edgeconf(&agent, &["lease", "grant", "30"]));
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.ends_with("granted with TTL(30s)\n"), "{granted}");
    ok(edgeconf(&agent, &["put", "leased", "v", "--lease", &id]));
    let kept = ok(edgeconf(&agent, &["lease", "keep-alive", &id, "--once"]));
    assert_eq!(kept, format!("lease {id} keepalived with TTL(30)\n"));
    let ttl = ok(edgeconf(&agent, &["lease", "timetolive", &id, "--keys"]));
    assert!(ttl.contains("attached keys([\"leased\"])"), "{ttl}");
    assert_eq!(
        ok(edgeconf(&agent, &["lease", "list"])),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ok(edgeconf(&agent, &["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(edgeconf(&agent, &["get", "leased"])), "");
}

#[test]
fn status_shows_the_endpoint_as_leader() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(edgeconf(&agent, &["put", "a", "1"]));
    let line = ok(edgeconf(&agent, &["status"]));
    let fields: Vec<&str> = line.trim().split(", ").collect();
    assert_eq!(fields[0], agent.endpoint());
    assert_eq!(fields[4], "true", "{line}");
    assert_eq!(fields[7], "1", "revision: {line}");
    // The cluster id, in hex, as `edgeconf sign --cluster-id` takes it.
    let json_status: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "status"]))).unwrap();
    let cluster_id = json_status[0]["header"]["cluster_id"].as_u64().unwrap();
    assert_eq!(fields[8], format!("{cluster_id:x}"), "cluster: {line}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "status"]))).unwrap();
    assert!(json[0]["raft_term"].as_u64().unwrap() >= 1);
}

#[test]
fn errors_are_one_line_on_stderr_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(edgeconf(&agent, &["put", "other", "v"]));
    let cases: [(&[&str], &str); 5] = [
        (
            &["put", "k", "v", "--lease", "zz"],
            "invalid lease ID \"zz\"",
        ),
        (
            &["put", "k", "v", "--lease", "abc"],
            "requested lease not found",
        ),
        (
            &["rollback", "never", "--to-rev", "1"],
            "did not exist at revision 1",
        ),
        (&["history", "never"], "no retained history"),
        (&["get", "other", "--rev", "5"], "future revision"),
    ];
    for (args, expected) in cases {
        let output = edgeconf(&agent, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let err = stderr(&output);
        assert!(
            err.starts_with("Error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn bench_reads_linearizable_or_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let run = |consistency: &[&str]| -> serde_json::Value {
        let mut args = vec!["-w", "json", "bench", "get", "--total", "60"];
        args.extend(["--clients", "3", "--key-space", "20"]);
        args.extend(consistency);
        serde_json::from_str(&ok(edgeconf(&agent, &args))).unwrap()
    };
    let linearizable = run(&[]);
    assert_eq!(linearizable["consistency"], "linearizable");
    assert_eq!(linearizable["requests"], 60);
    let serializable = run(&["--consistency", "s"]);
    assert_eq!(serializable["consistency"], "serializable");
    assert_eq!(serializable["requests"], 60);
    // A value etcd's benchmark does not take either is refused up front.
    let output = edgeconf(&agent, &["bench", "get", "--consistency", "x"]);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("--consistency") && err.contains("[possible values: l, s]"),
        "{err}"
    );
}

#[test]
fn an_unreachable_endpoint_is_a_clear_error_not_a_hang() {
    let port = common::free_port().to_string();
    let output = run_with_timeout(
        Command::new(BIN).args([
            "--endpoints",
            &format!("127.0.0.1:{port}"),
            "--command-timeout",
            "2s",
            "get",
            "k",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains(&port) && err.contains("edgeconf agent"),
        "{err}"
    );
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_definition() {
    let run = |args: &[&str]| {
        ok(run_with_timeout(
            Command::new(BIN).args(args),
            Duration::from_secs(20),
        ))
    };
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completion", shell]);
        for word in ["edgeconf", "trust", "set-audience", "snapshot-count"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // The bash script is valid bash.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("edgeconf.bash");
    std::fs::write(&script, run(&["completion", "bash"])).unwrap();
    ok(run_with_timeout(
        Command::new("bash").arg("-n").arg(&script),
        Duration::from_secs(20),
    ));
    let err = stderr(&run_with_timeout(
        Command::new(BIN).args(["completion", "tcsh"]),
        Duration::from_secs(20),
    ));
    assert!(err.contains("possible values: bash"), "{err}");

    let page = run(&["man"]);
    assert!(page.contains(".TH edgeconf 1"), "{page}");
    assert!(
        page.contains("Configuration agent for edge fleets"),
        "{page}"
    );
    let pages = dir.path().join("man");
    run(&["man", "--out-dir", pages.to_str().unwrap()]);
    for name in [
        "edgeconf.1",
        "edgeconf-put.1",
        "edgeconf-trust-set-audience.1",
    ] {
        let text = std::fs::read_to_string(pages.join(name)).unwrap();
        assert!(text.starts_with(".ie"), "{name}: {text}");
    }
}

#[test]
fn the_agent_logs_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start_with(dir.path(), common::free_port(), &["--log-format", "json"]);
    ok(edgeconf(&agent, &["put", "/k", "v"]));
    let log = agent.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{line:?}: {err}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{log}"
    );
    assert!(lines.iter().any(|l| l["message"].is_string()), "{log}");
}

#[test]
fn watch_resumes_from_its_last_revision_after_the_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut agent = Agent::start_with(dir.path(), port, &[]);
    ok(edgeconf(&agent, &["put", "/r/a", "1"]));
    let watcher = std::thread::spawn({
        let endpoint = agent.endpoint();
        move || {
            run_with_timeout(
                Command::new(BIN).args(["--endpoints", &endpoint, "watch", "/r/", "--prefix"]),
                Duration::from_secs(15),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    ok(edgeconf(&agent, &["put", "/r/b", "2"]));
    std::thread::sleep(Duration::from_millis(300));
    agent.stop();
    // Changes while the watch is cut off are printed once it is back.
    let agent = Agent::start_with(dir.path(), port, &[]);
    ok(edgeconf(&agent, &["put", "/r/c", "3"]));
    ok(edgeconf(&agent, &["del", "/r/b"]));
    let output = watcher.join().unwrap();
    assert_eq!(
        stdout(&output),
        "PUT\n/r/b\n2\nPUT\n/r/c\n3\nDELETE\n/r/b\n",
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("resumed from revision 3"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn txn_reads_compares_and_requests_as_etcdctl_does() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    ok(edgeconf(&agent, &["put", "/t/mode", "blue"]));
    let txn = |script: &str| {
        common::run_with_input(
            Command::new(BIN).args(["--endpoints", &agent.endpoint(), "txn"]),
            Some(script.as_bytes()),
            Duration::from_secs(20),
        )
    };
    let script = "value(\"/t/mode\") = \"blue\"\nmod(\"/t/mode\") > \"0\"\n\nput /t/mode green\nget /t/mode\n\nput /t/mode red\n";
    let first = txn(script);
    assert_eq!(
        stdout(&first),
        "SUCCESS\n\nOK\n\n/t/mode\ngreen\n",
        "{}",
        stderr(&first)
    );
    // Now the value is green: the failure branch runs.
    let second = txn(script);
    assert_eq!(stdout(&second), "FAILURE\n\nOK\n");
    assert_eq!(
        ok(edgeconf(&agent, &["get", "/t/mode", "--print-value-only"])),
        "red\n"
    );
    // A line that does not parse names itself and what was expected.
    let bad = txn("size(\"/t/mode\") = \"1\"\n\n\n");
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("expected TARGET"), "{}", stderr(&bad));
}

#[test]
fn lock_runs_holders_one_at_a_time_and_elect_listens() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    let d = dir.path().to_path_buf();
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    let spawn = |args: Vec<String>, log: &str| {
        let out = std::fs::File::create(d.join(log)).unwrap();
        Command::new(BIN)
            .args(["--endpoints", &agent.endpoint()])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    };
    let order = d.join("order").display().to_string();
    let holder = |who: &str| {
        let script = format!("echo {who} >> {order}; sleep 1; echo {who}-done >> {order}");
        ["lock", "jobs", "--", "sh", "-c", &script]
            .map(String::from)
            .to_vec()
    };
    let mut first = spawn(holder("a"), "a.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !read("order").contains('a') {
        assert!(
            std::time::Instant::now() < deadline,
            "a never held the lock: {}",
            read("a.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut second = spawn(holder("b"), "b.log");
    assert!(first.wait().unwrap().success(), "{}", read("a.log"));
    assert!(second.wait().unwrap().success(), "{}", read("b.log"));
    assert_eq!(read("order"), "a\na-done\nb\nb-done\n");

    let mut leader = spawn(["elect", "web", "p1"].map(String::from).to_vec(), "p1.log");
    let mut listener = spawn(
        ["elect", "--listen", "web"].map(String::from).to_vec(),
        "listen.log",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !read("listen.log").contains("p1") {
        assert!(
            std::time::Instant::now() < deadline,
            "no leader seen: {}",
            read("listen.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(read("p1.log").starts_with("web/"), "{}", read("p1.log"));
    for child in [&mut leader, &mut listener] {
        let _ = child.kill();
        let _ = child.wait();
    }
}
