//! Latency histograms and counters the agent keeps as it works, for
//! `/metrics`: gRPC requests by method, WAL fsyncs, applying committed
//! entries, the store's syncs, rendering files; leader changes and failed
//! proposals; and the process's own figures (memory, CPU, open files) from
//! `/proc`.
//!
//! One agent runs per process, so these are process-wide statics: the
//! layers record into them without being handed a registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Upper bounds of the buckets, in seconds (Prometheus' `le`).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with [`BUCKETS`] (and +Inf).
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            took.as_nanos().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// Times `work` into this histogram.
    pub fn time<T>(&self, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = work();
        self.observe(start.elapsed());
        out
    }

    /// Writes the series of `name` with `labels` (`key="value",...` or "").
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

pub static WAL_FSYNC: Histogram = Histogram::new();
pub static APPLY: Histogram = Histogram::new();
pub static STORE_SYNC: Histogram = Histogram::new();
pub static RENDER: Histogram = Histogram::new();
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);
pub static PROPOSALS_FAILED: AtomicU64 = AtomicU64::new(0);
pub static COMMITS_INFERRED: AtomicU64 = AtomicU64::new(0);
pub static APPLIES_HELD: AtomicU64 = AtomicU64::new(0);
pub static READS_WITNESSED: AtomicU64 = AtomicU64::new(0);

/// gRPC methods seen, each with its histogram. Only methods of the
/// services served are kept (a client cannot grow the map with made-up
/// paths): at most this many.
const MAX_METHODS: usize = 128;
static RPCS: Mutex<BTreeMap<String, &'static Histogram>> = Mutex::new(BTreeMap::new());

fn record_rpc(method: &str, took: Duration) {
    // Known services, and a name that needs no escaping in a label.
    let known = [
        "/etcdserverpb.",
        "/edgeconf.v1.",
        "/v3lockpb.",
        "/v3electionpb.",
    ]
    .iter()
    .any(|service| method.starts_with(service))
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'_'));
    let method = if known { method } else { "other" };
    let mut rpcs = RPCS.lock().unwrap_or_else(|e| e.into_inner());
    let histogram = match rpcs.get(method) {
        Some(histogram) => *histogram,
        None if rpcs.len() < MAX_METHODS => {
            // Leaked once per method: a bounded set for the process' life.
            let histogram: &'static Histogram = Box::leak(Box::new(Histogram::new()));
            rpcs.insert(method.to_string(), histogram);
            histogram
        }
        None => return,
    };
    drop(rpcs);
    histogram.observe(took);
}

/// A tower layer timing every gRPC request (for streams: until the
/// response starts).
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcTimer;

impl<S> tower_layer::Layer<S> for RpcTimer {
    type Service = Timed<S>;

    fn layer(&self, inner: S) -> Timed<S> {
        Timed { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Timed<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Timed<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_string();
        let start = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let out = answer.await;
            // A method no service has (gRPC status 12, Unimplemented) is
            // not recorded: a client cannot fill the table with made-up
            // names.
            let unimplemented = out.as_ref().is_ok_and(|response| {
                response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|status| status == "12")
            });
            if !unimplemented {
                record_rpc(&method, start.elapsed());
            }
            out
        })
    }
}

/// Writes every histogram and counter, and the process' figures.
pub fn render(out: &mut String) {
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
    };
    help(
        out,
        "edgeconf_grpc_request_duration_seconds",
        "histogram",
        "gRPC requests by method (streams: until the response starts).",
    );
    for (method, histogram) in RPCS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        histogram.write(
            out,
            "edgeconf_grpc_request_duration_seconds",
            &format!("method=\"{method}\""),
        );
    }
    for (name, text, histogram) in [
        (
            "edgeconf_wal_fsync_duration_seconds",
            "WAL fsyncs.",
            &WAL_FSYNC,
        ),
        (
            "edgeconf_apply_duration_seconds",
            "Applying a batch of committed entries to the store.",
            &APPLY,
        ),
        (
            "edgeconf_store_sync_duration_seconds",
            "Making the store's applied entries durable (one durable redb commit), so the raft log can be compacted.",
            &STORE_SYNC,
        ),
        (
            "edgeconf_render_duration_seconds",
            "Rendering one [[render]] entry.",
            &RENDER,
        ),
    ] {
        help(out, name, "histogram", text);
        histogram.write(out, name, "");
    }
    for (name, text, counter) in [
        (
            "edgeconf_leader_changes_total",
            "Leader changes this member saw.",
            &LEADER_CHANGES,
        ),
        (
            "edgeconf_proposals_failed_total",
            "Proposals that failed (no leader, timeout, refused).",
            &PROPOSALS_FAILED,
        ),
        (
            "edgeconf_commits_inferred_total",
            "Times a follower learned of a commit from the leader's notice that its log is durable, before the leader's commit index came.",
            &COMMITS_INFERRED,
        ),
        (
            "edgeconf_applies_held_total",
            "Committed plain puts held for a later round's store transaction, under load.",
            &APPLIES_HELD,
        ),
        (
            "edgeconf_reads_witnessed_total",
            "Followers' read asks the leader answered at once, the asker making a quorum with it.",
            &READS_WITNESSED,
        ),
    ] {
        help(out, name, "counter", text);
        let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
    }
    process_metrics(out);
}

/// Resident memory, CPU time and open files of this process, as the
/// Prometheus client libraries name them.
fn process_metrics(out: &mut String) {
    let page = 4096.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let fields: Vec<f64> = statm
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if let (Some(virt), Some(rss)) = (fields.first(), fields.get(1)) {
            let _ = writeln!(
                out,
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}",
                rss * page
            );
            let _ = writeln!(
                out,
                "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {}",
                virt * page
            );
        }
    }
    if let Some(seconds) = cpu_seconds("self") {
        let _ = writeln!(
            out,
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {seconds}"
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
}

/// CPU time (user and system, in seconds) process `pid` ("self" for
/// this one) has used so far, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces).
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat (11 and 12 here), in
    // clock ticks of 1/100 s.
    Some((ticks(11) + ticks(12)) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_count_into_cumulative_buckets() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(300));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(20));
        let mut out = String::new();
        histogram.write(&mut out, "x", "m=\"a\"");
        assert!(out.contains("x_bucket{m=\"a\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{m=\"a\"} 3\n"), "{out}");
        let mut bare = String::new();
        histogram.write(&mut bare, "y", "");
        assert!(
            bare.contains("y_bucket{le=\"+Inf\"} 3\n") && bare.contains("y_count 3\n"),
            "{bare}"
        );
    }

    #[test]
    fn cpu_time_is_read_from_proc_and_grows_with_work() {
        let before = cpu_seconds("self").expect("this process's stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut spin = 0u64;
        while cpu_seconds("self").unwrap() <= before && std::time::Instant::now() < deadline {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        assert!(cpu_seconds("self").unwrap() > before, "no CPU time counted");
        assert_eq!(cpu_seconds("0"), None, "no such process");
        let mut out = String::new();
        process_metrics(&mut out);
        assert!(out.contains("process_cpu_seconds_total "), "{out}");
    }
}
