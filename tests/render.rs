//! Materialize: real agents rendering keys into real files in temp dirs.
//! Renders on put, delete and prefix changes; debounce and reload
//! coalescing; atomic replacement under a concurrent reader; drift repair;
//! live config edits; refused paths and templates; restarts.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{edgeconf, failed, free_port, ok, run_with_timeout, Agent, BIN};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Writes `dir/agent.toml` with `render_root = "out"` and `entries`, and
/// the templates the tests use.
fn write_config(dir: &Path, entries: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(
        dir.join("app.j2"),
        "{% set cfg = value | fromjson %}port = {{ cfg.port }}\nname = \"{{ cfg.name }}\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("upstream.j2"),
        "upstream app {\n{% for e in entries %}  server {{ e.value }};  # {{ e.name }}\n{% endfor %}}\n",
    )
    .unwrap();
    let config = dir.join("agent.toml");
    std::fs::write(&config, format!("render_root = \"out\"\n{entries}")).unwrap();
    config
}

fn start(dir: &Path, entries: &str) -> Agent {
    let config = write_config(dir, entries);
    Agent::start_with(dir, free_port(), &["--config", config.to_str().unwrap()])
}

/// Waits until `check` holds for the file's content (`None`: missing).
#[track_caller]
fn wait_for(path: &Path, what: &str, check: impl Fn(Option<&str>) -> bool) -> Option<String> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let content = std::fs::read_to_string(path).ok();
        if check(content.as_deref()) {
            return content;
        }
        assert!(
            Instant::now() < deadline,
            "{} never became {what}; it is {content:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `edgeconf ARGS` (a status) until its output satisfies `check`.
#[track_caller]
fn wait_for_status(agent: &Agent, args: &[&str], check: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = ok(edgeconf(agent, args));
        if check(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn keys_and_prefixes_render_on_put_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        r#"
[[render]]
key = "/app/config"
template = "app.j2"
dest = "app.toml"

[[render]]
key = "/app/raw"
dest = "raw/motd"
mode = "0600"

[[render]]
prefix = "/up/"
template = "upstream.j2"
dest = "upstream.conf"
"#,
    );
    let out = dir.path().join("out");
    ok(edgeconf(
        &agent,
        &["put", "/app/config", r#"{"port": 8080, "name": "shop"}"#],
    ));
    ok(edgeconf(&agent, &["put", "/app/raw", "hello\n"]));
    ok(edgeconf(&agent, &["put", "/up/a", "10.0.0.1:80"]));
    ok(edgeconf(&agent, &["put", "/up/b", "10.0.0.2:80"]));
    wait_for(&out.join("app.toml"), "rendered", |c| {
        c == Some("port = 8080\nname = \"shop\"\n")
    });
    wait_for(&out.join("raw/motd"), "the raw value", |c| {
        c == Some("hello\n")
    });
    let mode = std::fs::metadata(out.join("raw/motd")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    wait_for(&out.join("upstream.conf"), "both servers", |c| {
        c.is_some_and(|c| c.contains("10.0.0.1:80;  # a") && c.contains("10.0.0.2:80;  # b"))
    });

    // A change, a delete under the prefix.
    ok(edgeconf(
        &agent,
        &["put", "/app/config", r#"{"port": 9090, "name": "shop"}"#],
    ));
    ok(edgeconf(&agent, &["del", "/up/a"]));
    wait_for(&out.join("app.toml"), "updated", |c| {
        c.is_some_and(|c| c.starts_with("port = 9090"))
    });
    wait_for(&out.join("upstream.conf"), "without a", |c| {
        c.is_some_and(|c| !c.contains("10.0.0.1") && c.contains("10.0.0.2"))
    });

    // A value the template cannot use, and a deleted required key: the
    // last good file stays and the failure is logged.
    ok(edgeconf(&agent, &["put", "/app/config", "not json"]));
    ok(edgeconf(&agent, &["del", "/app/raw"]));
    agent.wait_for_log("fromjson", TIMEOUT);
    agent.wait_for_log("\"/app/raw\" does not exist", TIMEOUT);
    assert!(std::fs::read_to_string(out.join("app.toml"))
        .unwrap()
        .starts_with("port = 9090"));
    assert_eq!(
        std::fs::read_to_string(out.join("raw/motd")).unwrap(),
        "hello\n"
    );
}

#[test]
fn a_burst_of_changes_renders_once_and_a_shared_reload_runs_once() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("reloads.log");
    let reload = format!("echo reloaded >> {}", count.display());
    let agent = start(
        dir.path(),
        &format!(
            r#"
[[render]]
prefix = "/up/"
template = "upstream.j2"
dest = "upstream.conf"
debounce = "1500ms"
reload = "{reload}"

[[render]]
key = "/up/a"
dest = "first"
debounce = "1500ms"
reload = "{reload}"
"#
        ),
    );
    // At start the prefix renders (empty) and reloads once; the key is
    // missing, which is an error and no reload.
    wait_for(&count, "reloaded at start", |c| c.is_some());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::etcd_client(&agent).await;
        for i in 0..20 {
            client
                .put(
                    format!("/up/{}", (b'a' + i % 5) as char),
                    format!("10.0.0.{i}:80"),
                    None,
                )
                .await
                .unwrap();
        }
    });
    let out = dir.path().join("out");
    wait_for(&out.join("upstream.conf"), "rendered", |c| {
        c.is_some_and(|c| c.contains("10.0.0.19:80"))
    });
    wait_for(&count, "reloaded", |c| {
        c.is_some_and(|c| c.lines().count() >= 2)
    });
    // Wait past another window: nothing more may come.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(lines(&count), 2, "one reload for 20 writes and two entries");
    let renders = agent.log().matches(" rendered ").count();
    assert_eq!(
        renders,
        3,
        "start, then one render per entry:\n{}",
        agent.log()
    );
}

#[test]
fn readers_never_see_a_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        r#"
[[render]]
key = "/big"
dest = "big"
debounce = "1ms"
"#,
    );
    let path = dir.path().join("out/big");
    const SIZE: usize = 512 * 1024;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(content) = std::fs::read(&path) {
                    assert_eq!(content.len(), SIZE, "a partial file");
                    assert!(content.iter().all(|b| *b == content[0]), "a mixed file");
                    reads += 1;
                }
            }
            reads
        })
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = common::etcd_client(&agent).await;
        for i in 0..40u8 {
            client
                .put("/big", vec![b'a' + i % 26; SIZE], None)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    wait_for(&path, "the last value", |c| {
        c.is_some_and(|c| c.starts_with('n'))
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let reads = reader.join().unwrap();
    assert!(reads > 10, "the reader hardly ran ({reads} reads)");
}

#[test]
fn hand_edits_are_restored_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        r#"
[[render]]
key = "/a"
dest = "restored"

[[render]]
key = "/b"
dest = "reported"
on_drift = "report"
"#,
    );
    let out = dir.path().join("out");
    ok(edgeconf(&agent, &["put", "/a", "good a"]));
    ok(edgeconf(&agent, &["put", "/b", "good b"]));
    wait_for(&out.join("restored"), "rendered", |c| c == Some("good a"));
    wait_for(&out.join("reported"), "rendered", |c| c == Some("good b"));

    let edited = Instant::now();
    std::fs::write(out.join("restored"), "edited").unwrap();
    std::fs::write(out.join("reported"), "edited").unwrap();
    wait_for(&out.join("restored"), "restored", |c| c == Some("good a"));
    println!("hand edit restored after {:?}", edited.elapsed());
    std::fs::remove_file(out.join("restored")).unwrap();
    wait_for(&out.join("restored"), "restored after delete", |c| {
        c == Some("good a")
    });
    // A mode changed by hand is put back too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out.join("restored"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while std::fs::metadata(out.join("restored")).unwrap().mode() & 0o777 != 0o644 {
        assert!(Instant::now() < deadline, "mode not restored");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.wait_for_log("left as it is", TIMEOUT);
    assert_eq!(
        std::fs::read_to_string(out.join("reported")).unwrap(),
        "edited"
    );
}

#[test]
fn config_edits_apply_live_and_bad_edits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = r#"
[[render]]
key = "/a"
dest = "a"
"#;
    let agent = start(dir.path(), first);
    let out = dir.path().join("out");
    ok(edgeconf(&agent, &["put", "/a", "1"]));
    ok(edgeconf(&agent, &["put", "/b", "2"]));
    wait_for(&out.join("a"), "rendered", |c| c == Some("1"));

    // A new entry: rendered without a restart.
    let config = dir.path().join("agent.toml");
    let both = format!("render_root = \"out\"\n{first}\n[[render]]\nkey = \"/b\"\ndest = \"b\"\n");
    std::fs::write(&config, &both).unwrap();
    wait_for(&out.join("b"), "rendered after the edit", |c| {
        c == Some("2")
    });

    // A broken edit (a template that does not compile) is refused; the
    // running entries go on.
    std::fs::write(dir.path().join("broken.j2"), "{% for %}").unwrap();
    std::fs::write(
        &config,
        format!("{both}\n[[render]]\nkey = \"/c\"\ntemplate = \"broken.j2\"\ndest = \"c\"\n"),
    )
    .unwrap();
    agent.wait_for_log("config file edit refused", TIMEOUT);
    ok(edgeconf(&agent, &["put", "/b", "3"]));
    wait_for(&out.join("b"), "still rendered", |c| c == Some("3"));
    assert!(!out.join("c").exists());

    // A path outside the root is refused live as well.
    std::fs::write(
        &config,
        format!("{both}\n[[render]]\nkey = \"/c\"\ndest = \"../c\"\n"),
    )
    .unwrap();
    agent.wait_for_log("contains \"..\"", TIMEOUT);

    // Editing a template re-renders with it, without touching the TOML.
    std::fs::write(dir.path().join("b.j2"), "b is {{ value }}\n").unwrap();
    std::fs::write(
        &config,
        format!("{both}\n[[render]]\nkey = \"/b\"\ntemplate = \"b.j2\"\ndest = \"b-templated\"\n"),
    )
    .unwrap();
    wait_for(&out.join("b-templated"), "rendered", |c| {
        c == Some("b is 3\n")
    });
    std::fs::write(dir.path().join("b.j2"), "b = {{ value }}\n").unwrap();
    wait_for(
        &out.join("b-templated"),
        "re-rendered with the edited template",
        |c| c == Some("b = 3\n"),
    );
}

#[test]
fn reload_commands_time_out_and_background_children_do_not_hold_them() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        r#"
[[render]]
key = "/slow"
dest = "slow"
reload = "sleep 30"
reload_timeout = "300ms"

[[render]]
key = "/daemon"
dest = "daemon"
reload = "sleep 30 & echo started"
reload_timeout = "5s"
"#,
    );
    ok(edgeconf(&agent, &["put", "/slow", "1"]));
    ok(edgeconf(&agent, &["put", "/daemon", "1"]));
    agent.wait_for_log("reload command succeeded", TIMEOUT);
    wait_for_status(&agent, &["status", "-w", "json"], |status| {
        status.contains("did not finish within 300ms")
            && status.contains("\"dest\":\"")
            && !status.contains("did not finish within 5s")
    });
}

#[test]
fn bad_paths_and_templates_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    write_config(dir.path(), "");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("out/escape")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/later", dir.path().join("out/dangling")).unwrap();
    std::fs::create_dir(dir.path().join("out/adir")).unwrap();
    std::fs::write(dir.path().join("out/afile"), "").unwrap();
    std::fs::write(dir.path().join("broken.j2"), "{{ value | fromjson }").unwrap();
    let cases = [
        ("key = \"/a\"\ndest = \"../a\"", "\"..\""),
        (
            "key = \"/a\"\ndest = \"/etc/passwd\"",
            "outside render_root",
        ),
        ("key = \"/a\"\ndest = \"escape/x\"", "symlink"),
        ("key = \"/a\"\ndest = \"dangling/x\"", "does not resolve"),
        ("key = \"/a\"\ndest = \"adir\"", "is a directory"),
        ("key = \"/a\"\ndest = \"afile/x\"", "is a file"),
        ("key = \"/a\"\ndest = \"a\"\ndebounce = \"2h\"", "at most"),
        (
            "key = \"/a\"\ntemplate = \"broken.j2\"\ndest = \"a\"",
            "broken.j2",
        ),
        ("prefix = \"/a/\"\ndest = \"a\"", "needs a template"),
        ("key = \"/a\"\ndest = \"a\"\nmode = \"rw\"", "octal"),
        ("dest = \"a\"", "`key` is missing"),
        ("key = \"/a\"\ndest = \"a\"\ncheck = \"true\"", "put {}"),
    ];
    for (entry, expected) in cases {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!("render_root = \"out\"\n[[render]]\n{entry}\n"),
        )
        .unwrap();
        let err = failed(run_with_timeout(
            Command::new(BIN).args(["agent", "--check", "--config", config.to_str().unwrap()]),
            Duration::from_secs(30),
        ));
        assert!(err.contains(expected), "{entry}: {err}");
        assert!(err.contains("[[render]]"), "{entry}: {err}");
    }
}

#[test]
fn a_restart_renders_once_and_reloads_only_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("reloads.log");
    let entries = format!(
        r#"
[[render]]
key = "/a"
dest = "a"
atomic = "in-place"
reload = "echo reloaded >> {}"
"#,
        count.display()
    );
    let mut agent = start(dir.path(), &entries);
    let file = dir.path().join("out/a");
    ok(edgeconf(&agent, &["put", "/a", "1"]));
    wait_for(&file, "rendered", |c| c == Some("1"));
    wait_for(&count, "reloaded", |c| c.is_some());
    let inode = std::fs::metadata(&file).unwrap().ino();
    ok(edgeconf(&agent, &["put", "/a", "two"]));
    wait_for(&file, "rewritten", |c| c == Some("two"));
    wait_for(&count, "reloaded twice", |c| {
        c.is_some_and(|c| c.lines().count() == 2)
    });
    assert_eq!(
        std::fs::metadata(&file).unwrap().ino(),
        inode,
        "in-place keeps the inode"
    );

    assert!(agent.stop());
    let config = dir.path().join("agent.toml");
    let agent = Agent::start_with(
        dir.path(),
        agent.port,
        &["--config", config.to_str().unwrap()],
    );
    agent.wait_for_log("changed=false", TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&count), 2, "no reload when nothing changed");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let public = ok(run_with_timeout(
        Command::new(BIN).args(["keygen", "--out", path.to_str().unwrap()]),
        Duration::from_secs(30),
    ));
    (path, public.trim().to_string())
}

#[test]
fn failures_show_in_status_metrics_and_dry_run_and_keep_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, trusted) = keygen(dir.path(), "op.key");
    let (_, stranger) = keygen(dir.path(), "other.key");
    let metrics_port = free_port();
    let config = dir.path().join("agent.toml");
    let write = |signer: &str| {
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::write(
            &config,
            format!(
                r#"render_root = "out"
listen_metrics_url = "http://127.0.0.1:{metrics_port}"

[trust]
keys = ["{signer}"]

[[trust.prefix]]
prefix = "/cfg/"

[[render]]
key = "/cfg/app"
dest = "app"

[[render]]
key = "/plain"
dest = "plain"
reload = "echo failing reload >&2; exit 3"
"#
            ),
        )
        .unwrap();
    };
    write(&trusted);
    let mut agent = Agent::start_with(
        dir.path(),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let out = dir.path().join("out");
    let key = key_file.to_str().unwrap();
    ok(edgeconf(
        &agent,
        &["put", "--sign-key", key, "/cfg/app", "signed v1"],
    ));
    ok(edgeconf(&agent, &["put", "/plain", "p1"]));
    wait_for(&out.join("app"), "rendered", |c| c == Some("signed v1"));
    wait_for(&out.join("plain"), "rendered", |c| c == Some("p1"));

    // A failing reload is retried and shows in status and metrics.
    wait_for_status(&agent, &["status"], |status| {
        status.contains("reload failed: exit status: 3: failing reload")
    });
    // Retried with backoff (1 s, then 2 s): a second failure comes.
    let failures = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("edgeconf_render_reload_failures_total") && l.contains("plain"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + TIMEOUT;
    while failures(&fetch_metrics(metrics_port)) < 2 {
        assert!(
            Instant::now() < deadline,
            "the failed reload was not retried"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = fetch_metrics(metrics_port);
    assert!(
        metrics.contains("edgeconf_render_writes_total"),
        "{metrics}"
    );

    // The dry run shows a pending change as a diff, and writes nothing.
    std::fs::write(out.join("plain"), "hand edit").unwrap();
    wait_for(&out.join("plain"), "restored", |c| c == Some("p1"));
    let dry = ok(edgeconf(
        &agent,
        &["render", "--dry-run", "--config", config.to_str().unwrap()],
    ));
    assert!(
        dry.contains("app: up to date") && dry.contains("plain: up to date"),
        "{dry}"
    );

    // The operator key is replaced while the agent is down: the stored
    // value no longer checks out, so the last good file stays and the
    // failure is reported.
    assert!(agent.stop());
    write(&stranger);
    let agent = Agent::start_with(
        dir.path(),
        agent.port,
        &["--config", config.to_str().unwrap()],
    );
    wait_for_status(&agent, &["status", "-w", "json"], |status| {
        status.contains("render failed") || status.contains("\"error\":\"/cfg/app")
    });
    assert_eq!(
        std::fs::read_to_string(out.join("app")).unwrap(),
        "signed v1"
    );
    let metrics = fetch_metrics(metrics_port);
    assert!(
        metrics.contains(&format!(
            "edgeconf_render_failing{{dest=\"{}\"}} 1",
            out.join("app").display()
        )),
        "{metrics}"
    );
    let dry = edgeconf(
        &agent,
        &["render", "--dry-run", "--config", config.to_str().unwrap()],
    );
    assert!(
        stdout_of(&dry).contains("plain: up to date"),
        "{}",
        stdout_of(&dry)
    );
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// GET /metrics with a bare HTTP/1.0 request.
fn fetch_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    text
}

#[test]
fn a_reload_cut_off_by_a_crash_runs_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("reloads.log");
    let entries = format!(
        r#"
[[render]]
key = "/a"
dest = "a"
reload = "echo started >> {}; sleep 3"
"#,
        log.display()
    );
    let mut agent = start(dir.path(), &entries);
    ok(edgeconf(&agent, &["put", "/a", "1"]));
    wait_for(&dir.path().join("out/a"), "rendered", |c| c == Some("1"));
    wait_for(&log, "reload started", |c| c.is_some());
    // Killed while the reload runs: the file is new, the reload unfinished.
    agent.kill9();
    let config = dir.path().join("agent.toml");
    let agent = Agent::start_with(
        dir.path(),
        agent.port,
        &["--config", config.to_str().unwrap()],
    );
    wait_for(&log, "reloaded again after the restart", |c| {
        c.is_some_and(|c| c.lines().count() == 2)
    });
    assert!(
        agent.log().contains("left pending before the restart"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_check_command_refusing_the_content_keeps_the_last_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = start(
        dir.path(),
        r#"
[[render]]
key = "/conf"
dest = "app.conf"
check = "grep -q '^valid' {}"
"#,
    );
    let file = dir.path().join("out/app.conf");
    ok(edgeconf(&agent, &["put", "/conf", "valid 1"]));
    wait_for(&file, "rendered", |c| c == Some("valid 1"));
    ok(edgeconf(&agent, &["put", "/conf", "broken"]));
    wait_for_status(&agent, &["status"], |status| {
        status.contains("check command refused the new content")
    });
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "valid 1");
    // No temporary file is left behind, and a valid value goes through.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".edgeconf"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    ok(edgeconf(&agent, &["put", "/conf", "valid 2"]));
    wait_for(&file, "rendered again", |c| c == Some("valid 2"));
}
