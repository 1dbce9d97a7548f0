//! Single-node benchmark through the gRPC API: put and range throughput and
//! latency, and the agent's idle memory, side by side with a real etcd when
//! one is installed (`./setup.sh` installs Debian's etcd-server).
//!
//! Run: `cargo bench --bench api` (prints figures; asserts nothing).
//! Each scenario runs ROUNDS times; the medians are printed.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgeconf::cli::bench::{prepare, run, BenchArgs, Report, Workload};

const ROUNDS: usize = 3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn edgeconf(dir: &Path) -> Server {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_edgeconf"))
            .args(["agent", "--log-level", "warn", "--data-dir"])
            .arg(dir.join("edgeconf"))
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{port}"))
            .arg("--listen-peer-urls")
            .arg(format!("quic://127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start edgeconf agent");
        Self::ready("edgeconf", child, port)
    }

    fn etcd(dir: &Path) -> Option<Server> {
        let (port, peer) = (free_port(), free_port());
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Self::ready("etcd", child, port))
    }

    fn ready(name: &'static str, child: Child, port: u16) -> Server {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            name,
            child,
            endpoint: format!("127.0.0.1:{port}"),
        }
    }

    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Median throughput, p50 and p99 (ms) over the rounds.
fn measure(rt: &tokio::runtime::Runtime, server: &Server, args: &BenchArgs) -> (f64, f64, f64) {
    let endpoints = [server.endpoint.clone()];
    let reports: Vec<Report> = (0..ROUNDS)
        .map(|_| rt.block_on(run(&endpoints, args)).expect("benchmark run"))
        .collect();
    (
        median(reports.iter().map(Report::throughput).collect()),
        median(reports.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect()),
        median(reports.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect()),
    )
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = vec![Server::edgeconf(dir.path())];
    match Server::etcd(dir.path()) {
        Some(etcd) => servers.push(etcd),
        None => println!("(etcd not found: run ./setup.sh for the side-by-side figures)"),
    }
    std::thread::sleep(Duration::from_secs(2));
    for server in &servers {
        println!("{:>8}: idle RSS {:.1} MiB", server.name, server.rss_mib());
    }

    let scenarios = [
        ("put, 1 client", Workload::Put, 1, 2_000),
        ("put, 16 clients", Workload::Put, 16, 20_000),
        ("get one key, 16 clients", Workload::Get, 16, 40_000),
        ("range 100 keys, 16 clients", Workload::Prefix, 16, 10_000),
    ];
    println!(
        "\n{:<28} {:>8} {:>12} {:>10} {:>10}",
        "scenario", "server", "req/s", "p50 ms", "p99 ms"
    );
    for (label, workload, clients, total) in scenarios {
        let args = BenchArgs {
            workload,
            clients,
            total,
            value_size: 256,
            key_space: 1_000,
        };
        let mut throughputs = Vec::new();
        for server in &servers {
            if workload != Workload::Put {
                rt.block_on(prepare(std::slice::from_ref(&server.endpoint), &args))
                    .unwrap();
            }
            let (throughput, p50, p99) = measure(&rt, server, &args);
            throughputs.push(throughput);
            println!(
                "{label:<28} {:>8} {throughput:>12.0} {p50:>10.2} {p99:>10.2}",
                server.name
            );
        }
        if let [ours, etcd] = throughputs[..] {
            println!("{label:<28} {:>8} {:>11.2}x", "ratio", ours / etcd);
        }
    }
    println!();
    for server in &servers {
        println!(
            "{:>8}: RSS after load {:.1} MiB",
            server.name,
            server.rss_mib()
        );
    }
}
