//! `edgeconf bench`: a load generator over the etcd API, so the same figures
//! can be taken against an agent, a cluster or a real etcd.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use etcd_client::GetOptions;
use serde_json::json;

use super::output::{print_json, Format};
use super::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put random keys of the key space.
    Put,
    /// Get one random key of the key space.
    Get,
    /// Get a prefix holding 100 keys.
    Prefix,
}

/// How the read workloads read, as etcd's `benchmark range --consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable: each read waits for a ReadIndex round (the default).
    #[value(name = "l")]
    Linearizable,
    /// Serializable: the member answers from its own store at once.
    #[value(name = "s")]
    Serializable,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Connections the clients share (0: one per client).
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 10_000)]
    pub total: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Distinct keys written (put) or read (get).
    #[arg(long, default_value_t = 1_000)]
    pub key_space: usize,
    /// Reads (get, prefix): l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    pub consistency: Consistency,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub requests: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

impl Report {
    /// The report of these latencies, measured over `elapsed`.
    pub fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = (latencies.len() as f64 * q) as usize;
            latencies
                .get(index.min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        Self {
            requests: latencies.len(),
            elapsed,
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

fn key(i: usize) -> String {
    format!("bench/{i:08}")
}

/// Writes the keys the read workloads read (and the `bench/prefix/` range).
pub async fn prepare(endpoints: &[String], args: &BenchArgs) -> anyhow::Result<()> {
    let mut client = etcd_client::Client::connect(endpoints, None).await?;
    let value = vec![b'v'; args.value_size];
    for i in 0..args.key_space {
        client.put(key(i), value.clone(), None).await?;
    }
    for i in 0..100 {
        client
            .put(format!("bench/prefix/{i:03}"), value.clone(), None)
            .await?;
    }
    Ok(())
}

/// Runs the workload: `total` requests spread over `clients` connections.
pub async fn run(endpoints: &[String], args: &BenchArgs) -> anyhow::Result<Report> {
    let clients = args.clients.max(1);
    let wanted = if args.connections == 0 {
        clients
    } else {
        args.connections.min(clients)
    };
    let mut connections = Vec::with_capacity(wanted);
    for _ in 0..wanted {
        connections.push(etcd_client::Client::connect(endpoints, None).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for n in 0..clients {
        // Clients on one connection share it (HTTP/2 streams).
        let mut client = connections[n % wanted].clone();
        let args = args.clone();
        let share = args.total / clients + usize::from(n < args.total % clients);
        tasks.push(tokio::spawn(async move {
            let value = vec![b'v'; args.value_size];
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let i = rand::random_range(0..args.key_space.max(1));
                let sent = Instant::now();
                match args.workload {
                    Workload::Put => client.put(key(i), value.clone(), None).await.map(|_| ())?,
                    Workload::Get => client
                        .get(key(i), Some(read_options(args.consistency)))
                        .await
                        .map(|_| ())?,
                    Workload::Prefix => client
                        .get(
                            "bench/prefix/",
                            Some(read_options(args.consistency).with_prefix()),
                        )
                        .await
                        .map(|_| ())?,
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, etcd_client::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.total);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(Report::new(latencies, start.elapsed()))
}

fn read_options(consistency: Consistency) -> GetOptions {
    match consistency {
        Consistency::Linearizable => GetOptions::new(),
        Consistency::Serializable => GetOptions::new().with_serializable(),
    }
}

pub async fn bench(client: &Client, format: Format, args: BenchArgs) -> anyhow::Result<()> {
    if args.workload != Workload::Put {
        prepare(&client.endpoints, &args).await?;
    }
    let report = run(&client.endpoints, &args).await?;
    match format {
        Format::Json => print_json(&json!({
            "workload": format!("{:?}", args.workload).to_lowercase(),
            "consistency": format!("{:?}", args.consistency).to_lowercase(),
            "clients": args.clients,
            "requests": report.requests,
            "throughput": report.throughput(),
            "p50_ms": report.p50.as_secs_f64() * 1e3,
            "p99_ms": report.p99.as_secs_f64() * 1e3,
        })),
        _ => println!(
            "{:?}: {} requests, {} clients: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            args.workload,
            report.requests,
            args.clients,
            report.throughput(),
            report.p50.as_secs_f64() * 1e3,
            report.p99.as_secs_f64() * 1e3
        ),
    }
    Ok(())
}

/// Latency from a put's acknowledgement to the watch event announcing it
/// (0 when the event came first): puts go to `put_endpoint`, the watcher
/// sits on `watch_endpoint`.
pub async fn watch_latency(
    put_endpoint: &str,
    watch_endpoint: &str,
    samples: usize,
) -> anyhow::Result<Report> {
    let mut writer = etcd_client::Client::connect([put_endpoint], None).await?;
    let mut watcher = etcd_client::Client::connect([watch_endpoint], None).await?;
    let mut stream = watcher.watch("bench/watch", None).await?;
    // Wait for the watch to be registered before the first put.
    stream.message().await?;
    let value = vec![b'w'; 256];
    let mut latencies = Vec::with_capacity(samples);
    let start = Instant::now();
    for _ in 0..samples {
        let put = writer.put("bench/watch", value.clone(), None).await?;
        let acked = Instant::now();
        let revision = put.header().map_or(0, |h| h.revision());
        let arrived = loop {
            let response = stream
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch stream ended"))?;
            if response
                .events()
                .iter()
                .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() >= revision))
            {
                break Instant::now();
            }
        };
        latencies.push(arrived.saturating_duration_since(acked));
    }
    Ok(Report::new(latencies, start.elapsed()))
}
