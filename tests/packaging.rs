//! The Debian package: built by the project's script, unpacked into a
//! scratch root, its unit accepted by systemd-analyze; and the agent's side
//! of the unit: readiness over $NOTIFY_SOCKET (Type=notify) and SIGHUP.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, ok, run_with_timeout, BIN};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

#[test]
fn the_deb_builds_installs_into_a_scratch_root_and_its_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let built = ok(run_with_timeout(
        Command::new("bash")
            .arg(repo().join("packaging/build-deb.sh"))
            .args(["--binary", BIN, "--out", out.to_str().unwrap(), "--fast"]),
        Duration::from_secs(300),
    ));
    let deb = built.trim().lines().last().unwrap().to_string();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{built}"
    );
    let info = ok(run_with_timeout(
        Command::new("dpkg-deb").args(["--info", &deb]),
        Duration::from_secs(30),
    ));
    assert!(
        info.contains("Package: edgeconf") && info.contains("conffiles"),
        "{info}"
    );

    let root = dir.path().join("root");
    ok(run_with_timeout(
        Command::new("dpkg").args(["-x", &deb, root.to_str().unwrap()]),
        Duration::from_secs(60),
    ));
    for file in [
        "usr/bin/edgeconf",
        "lib/systemd/system/edgeconf.service",
        "etc/edgeconf/edgeconf.toml",
        "usr/share/bash-completion/completions/edgeconf",
        "usr/share/zsh/vendor-completions/_edgeconf",
        "usr/share/fish/vendor_completions.d/edgeconf.fish",
        "usr/share/man/man1/edgeconf.1.gz",
        "usr/share/man/man1/edgeconf-snapshot-restore.1.gz",
    ] {
        assert!(root.join(file).exists(), "the package lacks {file}");
    }
    // The installed binary accepts the installed example config.
    let checked = ok(run_with_timeout(
        Command::new(root.join("usr/bin/edgeconf")).args([
            "agent",
            "--check",
            "--config",
            root.join("etc/edgeconf/edgeconf.toml").to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    ));
    assert!(checked.contains("is valid"), "{checked}");
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/edgeconf.service")).unwrap();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=edgeconf",
        "ProtectSystem=strict",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(line), "the unit lacks {line}");
    }

    // systemd-analyze checks the unit inside the scratch root: the host's
    // targets and kill (which the unit names) are put beside it.
    let units = root.join("lib/systemd/system");
    for target in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let target = target.unwrap().path();
        if target.extension().is_some_and(|e| e == "target") {
            let _ = std::fs::copy(&target, units.join(target.file_name().unwrap()));
        }
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).expect("kill (procps): run ./setup.sh");
    let verified = run_with_timeout(
        Command::new("systemd-analyze")
            .env("MANPATH", root.join("usr/share/man"))
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg("/lib/systemd/system/edgeconf.service"),
        Duration::from_secs(60),
    );
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn the_agent_tells_systemd_it_is_ready_and_reloads_what_it_can_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let config = dir.path().join("agent.toml");
    let (client_port, peer_port) = (free_port(), free_port());
    let write_config = |client_port: u16, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{client_port}\"]\nlisten_peer_urls = [\"quic://127.0.0.1:{peer_port}\"]\n{extra}\n",
                dir.path().join("data").display().to_string(),
            ),
        )
        .unwrap()
    };
    write_config(client_port, "[labels]\nregion = \"eu\"");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(BIN)
        .args(["agent", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).expect("no readiness notification");
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(message.contains("READY=1"), "{message}");

    // SIGHUP: the agent stays up, applies what it can and says which
    // edits need a restart.
    let service = "[[service]]\nname = \"web\"\nport = 8080\n";
    write_config(
        free_port(),
        &format!("[labels]\nregion = \"us\"\n\n{service}"),
    );
    ok(run_with_timeout(
        Command::new("kill").args(["-HUP", &agent.id().to_string()]),
        Duration::from_secs(5),
    ));
    let read_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // The agent logs the settings that need a restart before it applies
    // the labels: wait for both lines.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let log = read_log();
        if log.contains("take effect after a restart") && log.contains("reloaded [labels]") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The new labels apply at once; the new client port needs a restart.
    assert!(read_log().contains("listen_client_urls"), "{}", read_log());
    // The new [[service]] is announced without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let listed = run_with_timeout(
            Command::new(BIN).args([
                "--endpoints",
                &format!("127.0.0.1:{client_port}"),
                "service",
                "list",
            ]),
            Duration::from_secs(10),
        );
        if String::from_utf8_lossy(&listed.stdout).contains("web") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reloaded service is not listed: {}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited on SIGHUP"
    );

    ok(run_with_timeout(
        Command::new("kill").args(["-TERM", &agent.id().to_string()]),
        Duration::from_secs(5),
    ));
    let n = socket.recv(&mut buffer).expect("no stopping notification");
    assert!(String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while agent.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = agent.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
