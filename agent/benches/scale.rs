//! The cost as the work grows, Edgeconf and etcd side by side (three
//! members each, fsync on): throughput, memory and disk at 10k, 100k and
//! 1M keys of 256 bytes, then one member serving 1,000 watchers.
//!
//! Run: `cargo bench --bench scale` (prints figures; asserts nothing).
//! `-- --max-keys 100000` stops the growth earlier; `-- --no-etcd` skips
//! etcd.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeconf::cli::bench::{run, BenchArgs, Consistency, Report, Workload};
use support::{edgeconf_cluster, etcd_available, etcd_cluster, median, Server};

const STEPS: [usize; 3] = [10_000, 100_000, 1_000_000];
const VALUE: usize = 256;
/// Writers loading keys, over this many connections.
const LOADERS: usize = 64;
const CONNECTIONS: usize = 8;
const WATCHERS: usize = 1_000;
const WATCH_CONNECTIONS: usize = 10;
const WATCH_PUTS: usize = 200;

struct System {
    name: &'static str,
    members: Vec<Server>,
    data_dirs: Vec<std::path::PathBuf>,
}

impl System {
    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let max_keys = args
        .iter()
        .position(|a| a == "--max-keys")
        .and_then(|i| args.get(i + 1))
        .map_or(STEPS[2], |n| n.parse().expect("--max-keys takes a number"));
    let with_etcd = !args.iter().any(|a| a == "--no-etcd");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir_in(std::env::var_os("BENCH_DIR").unwrap_or_else(|| "/tmp".into()))
        .unwrap();
    let mut systems = vec![System {
        name: "edgeconf",
        members: edgeconf_cluster(dir.path(), 3),
        data_dirs: (0..3)
            .map(|i| dir.path().join(format!("edgeconf-{i}")))
            .collect(),
    }];
    if with_etcd && etcd_available() {
        systems.push(System {
            name: "etcd",
            members: etcd_cluster(dir.path(), 3),
            data_dirs: (0..3)
                .map(|i| dir.path().join(format!("etcd-{i}")))
                .collect(),
        });
    }
    std::thread::sleep(Duration::from_secs(3));

    println!(
        "{:<9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>22} {:>10}",
        "keys",
        "system",
        "load req/s",
        "put req/s",
        "put p99",
        "get req/s",
        "RSS/member MiB",
        "disk MiB"
    );
    let mut loaded = 0;
    for &keys in STEPS.iter().filter(|&&k| k <= max_keys) {
        for system in &systems {
            let started = Instant::now();
            rt.block_on(load(&system.endpoints(), loaded, keys))
                .expect("loading keys");
            let load_rate = (keys - loaded) as f64 / started.elapsed().as_secs_f64();
            let put = workload(&rt, system, Workload::Put, keys);
            let get = workload(&rt, system, Workload::Get, keys);
            std::thread::sleep(Duration::from_secs(1));
            let rss: Vec<f64> = system.members.iter().map(Server::rss_mib).collect();
            let disk = median(system.data_dirs.iter().map(|d| dir_mib(d)).collect());
            println!(
                "{keys:<9} {:>9} {load_rate:>11.0} {:>10.0} {:>8.2}ms {:>10.0} {:>22} {disk:>10.0}",
                system.name,
                put.throughput(),
                put.p99.as_secs_f64() * 1e3,
                get.throughput(),
                rss.iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
            );
        }
        loaded = keys;
    }

    println!();
    println!(
        "{} watchers on one member ({WATCH_CONNECTIONS} connections), {WATCH_PUTS} puts on another:",
        WATCHERS
    );
    println!(
        "{:<9} {:>16} {:>16} {:>16} {:>24}",
        "system", "first p50 ms", "all p50 ms", "all p99 ms", "watched member RSS MiB"
    );
    for system in &systems {
        let before = system.members[1].rss_mib();
        let (first, all, during) = rt
            .block_on(fan_out(
                &system.members[0].endpoint,
                &system.members[1],
                WATCHERS,
            ))
            .expect("fan-out run");
        println!(
            "{:<9} {:>16.2} {:>16.2} {:>16.2} {:>24}",
            system.name,
            first.p50.as_secs_f64() * 1e3,
            all.p50.as_secs_f64() * 1e3,
            all.p99.as_secs_f64() * 1e3,
            format!("{before:.0} -> {during:.0}"),
        );
    }
}

/// 20,000 requests of `workload` over the `keys` loaded, 64 clients over 8
/// connections.
fn workload(
    rt: &tokio::runtime::Runtime,
    system: &System,
    workload: Workload,
    keys: usize,
) -> Report {
    let args = BenchArgs {
        workload,
        clients: LOADERS,
        connections: CONNECTIONS,
        total: 20_000,
        value_size: VALUE,
        key_space: keys,
        consistency: Consistency::Linearizable,
    };
    rt.block_on(run(&system.endpoints(), &args))
        .expect("workload")
}

/// Writes keys `from..to` (`bench/%08d`, the names the workloads use), by
/// [`LOADERS`] writers over [`CONNECTIONS`] connections.
async fn load(endpoints: &[String], from: usize, to: usize) -> anyhow::Result<()> {
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(etcd_client::Client::connect(endpoints, None).await?);
    }
    let mut tasks = Vec::new();
    for n in 0..LOADERS {
        let mut client = connections[n % CONNECTIONS].clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; VALUE];
            for i in (from + n..to).step_by(LOADERS) {
                client
                    .put(format!("bench/{i:08}"), value.clone(), None)
                    .await?;
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// `watchers` watch one key on `watched`; puts go to `put_endpoint`. For
/// each put: the time from its acknowledgement until the first and until
/// the last watcher had the event. Also the watched member's RSS with every
/// watcher registered.
async fn fan_out(
    put_endpoint: &str,
    watched: &Server,
    watchers: usize,
) -> anyhow::Result<(Report, Report, f64)> {
    const KEY: &str = "bench/fan-out";
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    let mut connections = Vec::new();
    for _ in 0..WATCH_CONNECTIONS {
        connections.push(
            etcd_client::Client::connect([format!("http://{}", watched.endpoint)], None).await?,
        );
    }
    let registered = Arc::new(tokio::sync::Barrier::new(watchers + 1));
    let mut tasks = Vec::new();
    for n in 0..watchers {
        let mut client = connections[n % WATCH_CONNECTIONS].clone();
        let (tx, registered) = (tx.clone(), registered.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client.watch(KEY, None).await?;
            stream.message().await?; // created
            registered.wait().await;
            while let Some(response) = stream.message().await? {
                let now = Instant::now();
                for event in response.events() {
                    if let Some(kv) = event.kv() {
                        if tx.send((kv.mod_revision(), now)).is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            Ok::<_, etcd_client::Error>(())
        }));
    }
    registered.wait().await;
    let rss = watched.rss_mib();
    let mut writer = etcd_client::Client::connect([format!("http://{put_endpoint}")], None).await?;
    let value = vec![b'w'; VALUE];
    let (mut firsts, mut alls) = (Vec::new(), Vec::new());
    let start = Instant::now();
    for _ in 0..WATCH_PUTS {
        let put = writer.put(KEY, value.clone(), None).await?;
        let acked = Instant::now();
        let revision = put.header().map_or(0, |h| h.revision());
        let (mut seen, mut first) = (0, None);
        while seen < watchers {
            let (rev, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watchers ended"))?;
            if rev == revision {
                seen += 1;
                first.get_or_insert(at);
                if seen == watchers {
                    firsts.push(first.unwrap_or(at).saturating_duration_since(acked));
                    alls.push(at.saturating_duration_since(acked));
                }
            }
        }
    }
    let elapsed = start.elapsed();
    drop(rx);
    for task in tasks {
        task.abort();
    }
    Ok((
        Report::new(firsts, elapsed),
        Report::new(alls, elapsed),
        rss,
    ))
}

/// Bytes under `dir`, in MiB.
fn dir_mib(dir: &Path) -> f64 {
    fn walk(path: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if meta.is_dir() {
            std::fs::read_dir(path)
                .map(|entries| entries.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            meta.len()
        }
    }
    walk(dir) as f64 / (1 << 20) as f64
}
