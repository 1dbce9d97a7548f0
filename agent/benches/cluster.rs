//! Three-member clusters side by side: Edgeconf (raft over QUIC) and etcd
//! (Debian's etcd-server), driven by the same load generator through the
//! etcd v3 API, 256-byte values, both fsyncing before acknowledging.
//!
//! Run: `cargo bench --bench cluster` (prints figures; asserts nothing).
//! Each throughput scenario runs ROUNDS times per system, the systems'
//! rounds alternating; medians are printed, the median of the rounds'
//! ratios (each Edgeconf round against the etcd round after it), and the
//! CPU all three members spent per request over the rounds (user and
//! system time from /proc): on a machine the members and the load
//! generator share, throughput follows it. The load generator's own CPU
//! per request (this process's) is printed beside it: the same generator
//! drives both systems, and what it spends the members cannot.

mod support;

use std::time::Duration;

use edgeconf::cli::bench::{prepare, run, watch_latency, BenchArgs, Consistency, Report, Workload};
use support::{edgeconf_cluster, etcd_available, etcd_cluster, median, medians, Server};

const ROUNDS: usize = 5;

struct System {
    name: &'static str,
    members: Vec<Server>,
}

impl System {
    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    fn cpu_seconds(&self) -> f64 {
        self.members.iter().map(Server::cpu_seconds).sum()
    }
}

/// Three members of `name` ("edgeconf" or "etcd") with data under `dir`.
fn start(name: &'static str, dir: &std::path::Path) -> System {
    let members = match name {
        "edgeconf" => edgeconf_cluster(dir, 3),
        _ => etcd_cluster(dir, 3),
    };
    System { name, members }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut systems = vec![start("edgeconf", dir.path())];
    if etcd_available() {
        systems.push(start("etcd", dir.path()));
    } else {
        println!("(etcd not found: run ./setup.sh for the side-by-side figures)");
    }
    // Let both elect a leader.
    std::thread::sleep(Duration::from_secs(3));

    println!(
        "{:<40} {:>9} {:>10} {:>9} {:>9} {:>13} {:>13}",
        "scenario (3 members)", "system", "req/s", "p50 ms", "p99 ms", "cpu us/req", "gen us/req"
    );
    let scenarios = [
        ("put, 1 client sequential", Workload::Put, 1, 1, 2_000),
        (
            "put, 64 clients over 8 connections",
            Workload::Put,
            64,
            8,
            20_000,
        ),
        (
            "linearizable get, 64 clients / 8 conns",
            Workload::Get,
            64,
            8,
            40_000,
        ),
    ];
    for (label, workload, clients, connections, total) in scenarios {
        let args = BenchArgs {
            workload,
            clients,
            connections,
            total,
            value_size: 256,
            key_space: 1_000,
            consistency: Consistency::Linearizable,
        };
        for system in &systems {
            if workload == Workload::Get {
                rt.block_on(prepare(&system.endpoints(), &args)).unwrap();
            }
        }
        // Rounds alternate between the systems, so that a machine growing
        // busier or quieter during the run weighs on both alike.
        let mut reports: Vec<Vec<Report>> = systems.iter().map(|_| Vec::new()).collect();
        let mut cpu: Vec<f64> = vec![0.0; systems.len()];
        let mut generator_cpu: Vec<f64> = vec![0.0; systems.len()];
        for _ in 0..ROUNDS {
            for (i, system) in systems.iter().enumerate() {
                let before = (system.cpu_seconds(), own_cpu_seconds());
                reports[i].push(
                    rt.block_on(run(&system.endpoints(), &args))
                        .expect("benchmark run"),
                );
                cpu[i] += system.cpu_seconds() - before.0;
                generator_cpu[i] += own_cpu_seconds() - before.1;
            }
        }
        for (i, system) in systems.iter().enumerate() {
            let (throughput, p50, p99) = medians(&reports[i]);
            let per_request = |seconds: f64| seconds / (total * ROUNDS) as f64 * 1e6;
            let (cpu, generator) = (per_request(cpu[i]), per_request(generator_cpu[i]));
            println!(
                "{label:<40} {:>9} {throughput:>10.0} {p50:>9.2} {p99:>9.2} {cpu:>13.0} {generator:>13.0}",
                system.name
            );
        }
        for system in &systems {
            let rss: Vec<f64> = system.members.iter().map(Server::rss_mib).collect();
            print_rss("  RSS after it", system, &rss);
        }
        if let [ours, etcd] = &reports[..] {
            // The ratios of rounds run one after the other.
            let paired = |figure: fn(&Report) -> f64| -> Vec<f64> {
                ours.iter()
                    .zip(etcd)
                    .map(|(ours, etcd)| figure(ours) / figure(etcd))
                    .collect()
            };
            let ratios = paired(Report::throughput);
            let p50_ratios = paired(|r| r.p50.as_secs_f64());
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            println!(
                "{label:<40} {:>9} {:>9.2}x rate (rounds {}), p50 {:.2}x",
                "ratio",
                median(ratios),
                each.join(" "),
                median(p50_ratios)
            );
        }
    }

    // Watch latency: put on one member, watch on another.
    let mut p50s = Vec::new();
    for system in &systems {
        let put = format!("http://{}", system.members[0].endpoint);
        let watch = format!("http://{}", system.members[1].endpoint);
        let reports: Vec<Report> = (0..ROUNDS)
            .map(|_| {
                rt.block_on(watch_latency(&put, &watch, 500))
                    .expect("watch run")
            })
            .collect();
        let p50 = median(reports.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect());
        let p99 = median(reports.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect());
        p50s.push(p50);
        println!(
            "{:<40} {:>9} {:>10} {p50:>9.2} {p99:>9.2}",
            "watch latency, put ack -> event", system.name, "-"
        );
    }
    if let [ours, etcd] = p50s[..] {
        // Both are often under 10 µs, where a ratio says nothing.
        if etcd >= 0.01 {
            println!(
                "{:<40} {:>9} {:>9.2}x (p50, lower is better)",
                "watch latency",
                "ratio",
                ours / etcd
            );
        } else {
            println!(
                "{:<40} {:>9} {:>+9.2} ms (p50, edgeconf's minus etcd's)",
                "watch latency",
                "difference",
                ours - etcd
            );
        }
    }

    // Memory holding 10,000 keys: first on the clusters that ran the
    // scenarios above (their history and buffers included), then on fresh
    // clusters that hold exactly those keys.
    let load = BenchArgs {
        workload: Workload::Put,
        clients: 64,
        connections: 8,
        total: 10_000,
        value_size: 256,
        key_space: 10_000,
        consistency: Consistency::Linearizable,
    };
    let mut rss = Vec::new();
    for system in &systems {
        let measured = load_and_measure(&rt, system, &load);
        print_rss("after the scenarios, 10,000 keys", system, &measured);
        rss.push(measured);
    }
    print_rss_ratio("after the scenarios", &rss);
    let fresh_dir = tempfile::tempdir().unwrap();
    let names: Vec<&'static str> = systems.iter().map(|s| s.name).collect();
    drop(systems);
    let mut rss = Vec::new();
    for name in names {
        let system = start(name, fresh_dir.path());
        std::thread::sleep(Duration::from_secs(3));
        let measured = load_and_measure(&rt, &system, &load);
        print_rss("fresh cluster, 10,000 keys", &system, &measured);
        rss.push(measured);
    }
    print_rss_ratio("fresh clusters", &rss);
}

/// CPU time this process (the load generator) has used, in seconds.
fn own_cpu_seconds() -> f64 {
    edgeconf::telemetry::cpu_seconds("self").unwrap_or(0.0)
}

/// Writes `load` and returns each member's RSS in MiB a second later.
fn load_and_measure(rt: &tokio::runtime::Runtime, system: &System, load: &BenchArgs) -> Vec<f64> {
    rt.block_on(prepare(&system.endpoints(), load)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    system.members.iter().map(Server::rss_mib).collect()
}

fn print_rss(label: &str, system: &System, rss: &[f64]) {
    let each: Vec<String> = rss.iter().map(|mib| format!("{mib:.1}")).collect();
    println!(
        "{label:<40} {:>9} RSS per member MiB: {}",
        system.name,
        each.join(" / ")
    );
}

/// The ratio of the members' mean RSS, Edgeconf's over etcd's.
fn print_rss_ratio(label: &str, rss: &[Vec<f64>]) {
    if let [ours, etcd] = rss {
        let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        println!(
            "{:<40} {:>9} {:>9.2}x mean RSS per member ({label})",
            "memory",
            "ratio",
            mean(ours) / mean(etcd)
        );
    }
}
