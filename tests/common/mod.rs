//! Helpers shared by the cross-process tests: real agents as child processes
//! on loopback, and the real `edgeconf` binary as a client.

#![allow(dead_code)]

pub mod cluster;
pub mod fleet;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgeconf");

/// How long an agent may take to start accepting clients.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping agent may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free (TCP and UDP) a moment ago, picked below the
/// kernel's ephemeral range (32768 and up) so that the many short-lived
/// client sockets of a parallel test run cannot take it in the meantime.
/// `edgeconf keygen --out PATH`: an operator signing key; its public key.
pub fn keygen(path: &Path) -> String {
    let made = ok(run_with_timeout(
        Command::new(BIN).args(["-w", "json", "keygen", "--out", path.to_str().unwrap()]),
        Duration::from_secs(20),
    ));
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    made["public_key"].as_str().unwrap().to_string()
}

pub fn free_port() -> u16 {
    static PICKS: AtomicU64 = AtomicU64::new(0);
    loop {
        let salt = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 20)
            ^ PICKS
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let port = 20_000 + (salt.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as u16 % 12_000;
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        let udp = UdpSocket::bind(("127.0.0.1", port)).is_ok();
        // Never the same port twice in one test process: two members of a
        // cluster picked together must not get one port (it happened).
        static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        if tcp && udp && GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
}

/// An agent process; killed when dropped, so no test leaves one behind.
pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    log: PathBuf,
    /// Where this process's lines start in a log shared with earlier runs.
    log_start: usize,
}

impl Agent {
    /// Starts an agent with its data in `dir` on a free port.
    pub fn start(dir: &Path) -> Agent {
        // Another test may take a picked port before the agent binds it:
        // then try other ports.
        for _ in 0..4 {
            if let Some(agent) = Self::try_start_with(dir, free_port(), &[]) {
                return agent;
            }
        }
        Self::start_with(dir, free_port(), &[])
    }

    /// Starts an agent on client port `port`; its peer port is picked
    /// afresh (and again if taken meanwhile).
    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Agent {
        for _ in 0..4 {
            if let Some(agent) = Self::try_start_with(dir, port, extra) {
                return agent;
            }
        }
        Self::launch(dir, port, extra)
    }

    /// `None` when a port was taken under us.
    fn try_start_with(dir: &Path, port: u16, extra: &[&str]) -> Option<Agent> {
        let data_dir = dir.join("data");
        let args = Self::args(&data_dir, port, extra);
        Self::spawn_checked(dir, data_dir, port, &args)
    }

    fn launch(dir: &Path, port: u16, extra: &[&str]) -> Agent {
        let data_dir = dir.join("data");
        let args = Self::args(&data_dir, port, extra);
        Self::spawn(dir, data_dir, port, &args)
    }

    fn args(data_dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen-peer-urls".to_string(),
            format!("quic://127.0.0.1:{}", free_port()),
        ];
        // Tests that serve https give their own client URL.
        if !extra.contains(&"--listen-client-urls") {
            args.extend([
                "--listen-client-urls".to_string(),
                format!("http://127.0.0.1:{port}"),
            ]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Starts `edgeconf agent ARGS`; `port` is its client port.
    pub fn spawn(dir: &Path, data_dir: PathBuf, port: u16, args: &[String]) -> Agent {
        Self::spawn_as(dir, data_dir, port, args, None)
    }

    /// `spawn` as another user (`uid`, `gid`), when the tests run as root.
    pub fn spawn_as(
        dir: &Path,
        data_dir: PathBuf,
        port: u16,
        args: &[String],
        user: Option<(u32, u32)>,
    ) -> Agent {
        let mut agent = Self::spawn_process(dir, data_dir, port, args, user);
        if let Err(log) = agent.wait_ready() {
            panic!("{log}");
        }
        agent
    }

    /// Like `spawn`, but `None` if the agent could not bind a port.
    fn spawn_checked(dir: &Path, data_dir: PathBuf, port: u16, args: &[String]) -> Option<Agent> {
        let mut agent = Self::spawn_process(dir, data_dir, port, args, None);
        match agent.wait_ready() {
            Ok(()) => Some(agent),
            Err(log) if log.contains("Address already in use") => None,
            Err(log) => panic!("{log}"),
        }
    }

    fn spawn_process(
        dir: &Path,
        data_dir: PathBuf,
        port: u16,
        args: &[String],
        user: Option<(u32, u32)>,
    ) -> Agent {
        let log = dir.join(format!("agent-{port}.log"));
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(BIN);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        let child = command
            .arg("agent")
            .args(args)
            .env("RUST_LOG", "info")
            // Lets partition tests cut an agent off (see agent.rs).
            .env("EDGECONF_FAULT_INJECTION", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn edgeconf agent");
        Agent {
            child: Some(child),
            port,
            data_dir,
            log,
            log_start,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What this process has logged so far.
    pub fn log(&self) -> String {
        let all = std::fs::read_to_string(&self.log).unwrap_or_default();
        all.get(self.log_start..).unwrap_or_default().to_string()
    }

    /// Waits (up to `timeout`) until this process's log contains `needle`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the agent to be ready; on failure, says why.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "agent exited during start-up with {status}:\n{}",
                    self.log()
                ));
            }
            if self.log().contains("edgeconf agent ready") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "agent not ready within {START_TIMEOUT:?}:\n{}",
            self.log()
        ))
    }

    /// What /proc says of the process and each of its threads (state and
    /// where it waits): for a test's failure message.
    pub fn proc_state(&self) -> String {
        let Some(child) = self.child.as_ref() else {
            return "not running".into();
        };
        let pid = child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| {
                s.lines()
                    .filter(|l| l.starts_with("State:"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|e| format!("no /proc/{pid}: {e}"));
        let mut threads = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let read = |f: &str| {
                    std::fs::read_to_string(task.path().join(f))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                };
                let stat = read("stat");
                let state = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("?")
                    .to_string();
                threads.push(format!("{} {} {}", read("comm"), state, read("wchan")));
            }
        }
        // A zombie's wait status (low 7 bits: the signal that killed it).
        let exit_code = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.split_whitespace().last().map(str::to_string))
            .unwrap_or_default();
        format!(
            "pid {pid} {status} (wait status {exit_code}); threads: {}",
            threads.join(", ")
        )
    }

    /// The running agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("agent is running").id()
    }

    /// Sends a signal by name (e.g. "HUP") to the running agent.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("agent is running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited by itself (then it is reaped).
    pub fn exited(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if child.try_wait().unwrap().is_some() {
            self.child = None;
            return true;
        }
        false
    }

    /// Its exit status, once it has exited by itself.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns its success.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `edgeconf --endpoints <agent> ARGS` to completion (bounded).
pub fn edgeconf(agent: &Agent, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(BIN)
            .arg("--endpoints")
            .arg(agent.endpoint())
            // The default 2 s is etcdctl's; on a 2-core machine running a
            // dozen agents a CLI process may wait that long to be scheduled
            // (its connect then fails as "tcp connect error").
            .args(["--dial-timeout", "10s"])
            .args(args),
        Duration::from_secs(30),
    )
}

/// Runs `etcdctl --endpoints <agent> ARGS` (API v3) to completion (bounded).
pub fn etcdctl(agent: &Agent, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(agent.endpoint())
            .args(args),
        Duration::from_secs(30),
    )
}

/// Runs a command with no stdin and kills it if it outlives `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    run_with_input(command, None, timeout)
}

/// Runs a command with `input` (if any) as its whole stdin, and kills it if
/// it outlives `timeout`.
pub fn run_with_input(command: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn command");
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(input).expect("write the command's stdin");
    }
    let pid = child.id();
    let (done, waiter) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let output = child.wait_with_output().expect("wait for command");
        let _ = done.send(());
        output
    });
    if waiter.recv_timeout(timeout).is_err() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    handle.join().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
#[track_caller]
pub fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed with {}:\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Asserts failure and returns stderr.
#[track_caller]
pub fn failed(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command succeeded unexpectedly:\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    stderr(&output)
}

pub async fn etcd_client(agent: &Agent) -> etcd_client::Client {
    etcd_client::Client::connect([agent.url()], None)
        .await
        .expect("connect to agent")
}
