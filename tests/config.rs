//! Bootstrap: bad config files are refused before anything starts, with a
//! message naming the file, line and field; good ones and flags work.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{edgeconf, ok, run_with_timeout, stderr, Agent, BIN};

fn agent_with_config(dir: &Path, text: &str) -> std::process::Output {
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    run_with_timeout(
        Command::new(BIN)
            .current_dir(dir)
            .args(["agent", "--config", path.to_str().unwrap()]),
        Duration::from_secs(20),
    )
}

#[test]
fn bad_config_files_are_refused_naming_file_line_and_field() {
    let cases = [
        (
            "name = \"n1\"\ndata_dir = \"d\"\nlisten_clinet_urls = [\"http://127.0.0.1:1\"]\n",
            "line 3",
            "unknown field `listen_clinet_urls`",
        ),
        (
            "data_dir = \"d\"\nlisten_client_urls = [\"http://127.0.0.1\"]\n",
            "agent.toml:2",
            "without a port",
        ),
        (
            "data_dir = \"d\"\nlisten_client_urls = \"http://127.0.0.1:2379\"\n",
            "line 2",
            "listen_client_urls",
        ),
        (
            "data_dir = \"d\"\nname = \"n1\"\ninitial_cluster = \"n2=quic://127.0.0.1:2380\"\n",
            "agent.toml:3",
            "does not list this agent's name",
        ),
        (
            "data_dir = \"d\"\ninitial_cluster_state = \"old\"\n",
            "line 2",
            "expected `new` or `existing`",
        ),
        ("data_dir = \"d\"\nname = [\n", "line 2", "agent.toml"),
    ];
    for (text, location, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let output = agent_with_config(dir.path(), text);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{text:?}: {err}");
        assert!(
            err.contains("agent.toml"),
            "{text:?} should name the file: {err}"
        );
        assert!(
            err.contains(location),
            "{text:?} should name {location}: {err}"
        );
        assert!(
            err.contains(expected),
            "{text:?} should say {expected}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !dir.path().join("d").exists(),
            "nothing may start from a bad file"
        );
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let output = run_with_timeout(
        Command::new(BIN).args(["agent", "--config", "/nonexistent/edgeconf.toml"]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/nonexistent/edgeconf.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_example_configs_are_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = run_with_timeout(
                Command::new(BIN).args(["agent", "--check", "--config", path.to_str().unwrap()]),
                Duration::from_secs(20),
            );
            let out = ok(output);
            assert!(out.contains("is valid"), "{}: {out}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no example configs found in {}",
        examples.display()
    );
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_port = common::free_port();
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        format!("name = \"from-file\"\nlisten_client_urls = [\"http://127.0.0.1:{file_port}\"]\n"),
    )
    .unwrap();
    let flag_port = common::free_port();
    let agent = Agent::start_with(
        dir.path(),
        flag_port,
        &["--config", path.to_str().unwrap(), "--name", "from-flag"],
    );
    // The helper passes --listen-client-urls and --data-dir as flags too.
    let json: serde_json::Value =
        serde_json::from_str(&ok(edgeconf(&agent, &["-w", "json", "status"]))).unwrap();
    assert_eq!(json[0]["endpoint"], agent.endpoint());
    assert!(agent.log().contains("name=from-flag"), "{}", agent.log());
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Agent::start(dir.path());
    let output = run_with_timeout(
        Command::new(BIN).args([
            "agent",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", common::free_port()),
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("in use by another process"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut agent = Agent::start_with(dir.path(), port, &[]);
    ok(edgeconf(&agent, &["put", "k", "v"]));
    assert!(
        agent.stop(),
        "agent did not exit cleanly on SIGTERM:\n{}",
        agent.log()
    );
    let agent = Agent::start_with(dir.path(), port, &[]);
    assert_eq!(
        ok(edgeconf(&agent, &["get", "k", "--print-value-only"])),
        "v\n"
    );
}
