//! Server processes for the benchmarks: edgeconf agents and etcd members on
//! loopback, killed when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary the benchmarks start: this build's, unless
/// `EDGECONF_BIN` names another (such as the shipped `target/dist/edgeconf`).
pub fn edgeconf() -> String {
    std::env::var("EDGECONF_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_edgeconf").to_string())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Server {
    pub name: String,
    child: Child,
    pub endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn spawn(name: &str, command: &mut Command, client_port: u16) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start {name}: {err}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            name: name.to_string(),
            child,
            endpoint: format!("127.0.0.1:{client_port}"),
        }
    }

    /// CPU time the process has used so far (user and system), in
    /// seconds, from /proc.
    pub fn cpu_seconds(&self) -> f64 {
        edgeconf::telemetry::cpu_seconds(&self.child.id().to_string()).unwrap_or(0.0)
    }

    /// Resident memory in MiB, from /proc.
    pub fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The most resident memory the process has had, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

pub fn etcd_available() -> bool {
    Command::new("etcd").arg("--version").output().is_ok()
}

/// `n` etcd members (`n` = 1 for a single node) in `dir`.
pub fn etcd_cluster(dir: &Path, n: usize) -> Vec<Server> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let mut command = Command::new("etcd");
            command
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args([
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--log-level", "error"]);
            Server::spawn(&format!("etcd e{i}"), &mut command, *client)
        })
        .collect()
}

/// `n` edgeconf agents (`n` = 1 for a single node) in `dir`.
pub fn edgeconf_cluster(dir: &Path, n: usize) -> Vec<Server> {
    edgeconf_cluster_with(dir, n, |_| String::new())
}

/// The same, with `extra(i)` added to member `i`'s TOML (top-level
/// settings, then any tables).
pub fn edgeconf_cluster_with(dir: &Path, n: usize, extra: impl Fn(usize) -> String) -> Vec<Server> {
    edgeconf_configs(dir, n, extra)
        .iter()
        .enumerate()
        .map(|(i, member)| member.spawn(i))
        .collect()
}

/// A member's config, written, not started.
pub struct MemberConfig {
    pub config: std::path::PathBuf,
    pub data_dir: std::path::PathBuf,
    pub client_port: u16,
}

impl MemberConfig {
    pub fn spawn(&self, i: usize) -> Server {
        let mut command = Command::new(edgeconf());
        command.arg("agent").arg("--config").arg(&self.config);
        Server::spawn(&format!("edgeconf n{i}"), &mut command, self.client_port)
    }
}

/// Configs of `n` edgeconf members forming one cluster in `dir`.
pub fn edgeconf_configs(
    dir: &Path,
    n: usize,
    extra: impl Fn(usize) -> String,
) -> Vec<MemberConfig> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("n{i}=quic://127.0.0.1:{peer}"))
        .collect();
    let keys: Vec<String> = (0..n)
        .map(|i| {
            let out = Command::new(edgeconf())
                .arg("node-key")
                .arg("--data-dir")
                .arg(dir.join(format!("edgeconf-{i}")))
                .output()
                .expect("edgeconf node-key");
            format!("{:?}", String::from_utf8_lossy(&out.stdout).trim())
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, (client, peer))| {
            let config = dir.join(format!("edgeconf-{i}.toml"));
            let data_dir = dir.join(format!("edgeconf-{i}"));
            std::fs::write(
                &config,
                format!(
                    "name = \"n{i}\"\ndata_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{client}\"]\n\
                     listen_peer_urls = [\"quic://127.0.0.1:{peer}\"]\ninitial_cluster = {:?}\n\
                     log_level = \"warn\"\n{}\n[peer_trust]\nkeys = [{}]\n",
                    data_dir.display().to_string(),
                    initial.join(","),
                    extra(i),
                    keys.join(", ")
                ),
            )
            .unwrap();
            MemberConfig {
                config,
                data_dir,
                client_port: *client,
            }
        })
        .collect()
}

/// Runs a workload ROUNDS times against `endpoints`; returns the medians of
/// throughput (req/s), p50 and p99 (ms).
pub fn measure(
    rt: &tokio::runtime::Runtime,
    endpoints: &[String],
    args: &edgeconf::cli::bench::BenchArgs,
    rounds: usize,
) -> (f64, f64, f64) {
    use edgeconf::cli::bench::{run, Report};
    let reports: Vec<Report> = (0..rounds)
        .map(|_| rt.block_on(run(endpoints, args)).expect("benchmark run"))
        .collect();
    medians(&reports)
}

/// The medians of rounds' throughput (req/s), p50 and p99 (ms).
pub fn medians(reports: &[edgeconf::cli::bench::Report]) -> (f64, f64, f64) {
    use edgeconf::cli::bench::Report;
    (
        median(reports.iter().map(Report::throughput).collect()),
        median(reports.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
        median(reports.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
    )
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Rounds of a micro-benchmark; the median round is reported.
const ROUNDS: usize = 5;

/// Median over ROUNDS of the mean time per call, in microseconds.
pub fn per_call(iterations: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}
