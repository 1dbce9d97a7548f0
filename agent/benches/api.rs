//! Single-node benchmark through the gRPC API: put and range throughput and
//! latency, and the agent's idle memory, side by side with a real etcd when
//! one is installed (`./setup.sh` installs Debian's etcd-server).
//!
//! Run: `cargo bench --bench api` (prints figures; asserts nothing).
//! Each scenario runs ROUNDS times; the medians are printed.

mod support;

use std::time::Duration;

use edgeconf::cli::bench::{prepare, BenchArgs, Consistency, Workload};
use support::{edgeconf_cluster, etcd_available, etcd_cluster, measure};

const ROUNDS: usize = 3;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = edgeconf_cluster(dir.path(), 1);
    if etcd_available() {
        servers.extend(etcd_cluster(dir.path(), 1));
    } else {
        println!("(etcd not found: run ./setup.sh for the side-by-side figures)");
    }
    std::thread::sleep(Duration::from_secs(2));
    for server in &servers {
        println!("{:>10}: idle RSS {:.1} MiB", server.name, server.rss_mib());
    }

    let scenarios = [
        ("put, 1 client", Workload::Put, 1, 2_000),
        ("put, 16 clients", Workload::Put, 16, 20_000),
        ("get one key, 16 clients", Workload::Get, 16, 40_000),
        ("range 100 keys, 16 clients", Workload::Prefix, 16, 10_000),
    ];
    println!(
        "\n{:<28} {:>10} {:>12} {:>10} {:>10}",
        "scenario", "server", "req/s", "p50 ms", "p99 ms"
    );
    for (label, workload, clients, total) in scenarios {
        let args = BenchArgs {
            workload,
            clients,
            connections: 0,
            total,
            value_size: 256,
            key_space: 1_000,
            consistency: Consistency::Linearizable,
        };
        let mut throughputs = Vec::new();
        for server in &servers {
            if workload != Workload::Put {
                rt.block_on(prepare(std::slice::from_ref(&server.endpoint), &args))
                    .unwrap();
            }
            let endpoints = [server.endpoint.clone()];
            let (throughput, p50, p99) = measure(&rt, &endpoints, &args, ROUNDS);
            throughputs.push(throughput);
            println!(
                "{label:<28} {:>10} {throughput:>12.0} {p50:>10.2} {p99:>10.2}",
                server.name
            );
        }
        if let [ours, etcd] = throughputs[..] {
            println!("{label:<28} {:>10} {:>11.2}x", "ratio", ours / etcd);
        }
    }
    println!();
    for server in &servers {
        println!(
            "{:>10}: RSS after load {:.1} MiB",
            server.name,
            server.rss_mib()
        );
    }
}
