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
