//! The fault suite (Jepsen-style): clients read, write and compare-and-set
//! a few keys through the etcd API of three real voters and an edge agent
//! (which forwards writes and linearizable reads to a voter) while a
//! nemesis kills, pauses, partitions, fails disks and jumps clocks; then,
//! with every fault healed, the run is judged:
//! - the history is linearizable (per key, `edgeconf_faults::check`);
//! - every acknowledged write is in every agent's history, at its revision;
//! - every agent's watcher saw every revision once, in order, across
//!   reconnections (compared with a fresh replay of that agent);
//! - every agent's rendered file equals its store;
//! - no agent panicked.
//!
//! Used by `tests/faults.rs` (a short run in the test suite) and by
//! `cargo bench --bench faults -- --duration 30m` (release checks).

pub mod clients;
pub mod nemesis;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeconf_faults::history::{Counts, Entry};
use edgeconf_faults::{check, Verdict};
use etcd_client::{GetOptions, WatchOptions};

use crate::common::cluster::{local_state, wait_for_revision, Cluster, TIMEOUT};
use crate::common::fleet::fleet_with;
use clients::{Watched, Workload, PREFIX};
use nemesis::Fault;

/// Three voters (n1..n3) and one edge agent (n4), which follows the
/// voters' feed and forwards its clients' writes and linearizable reads.
const VOTERS: usize = 3;
const AGENTS: usize = VOTERS + 1;
/// Rendered by every member: each value of the prefix, one per line.
const TEMPLATE: &str = "{% for e in entries %}{{ e.value }}\n{% endfor %}";

pub struct Settings {
    /// How long faults are injected, at least (the workload runs a little
    /// longer).
    pub duration: Duration,
    pub clients: usize,
    /// Keys in use at once, and how long before clients move to new ones.
    pub keys: usize,
    pub key_life: Duration,
    /// How long each fault lasts, and the calm after it.
    pub hold: Duration,
    pub quiet: Duration,
    pub seed: u64,
}

impl Settings {
    /// About a minute and a half in all: every fault at least once (the
    /// nemesis finishes its first round past `duration` if it must).
    pub fn short() -> Settings {
        Settings {
            duration: Duration::from_secs(50),
            clients: 6,
            keys: 3,
            key_life: Duration::from_secs(10),
            hold: Duration::from_secs(2),
            quiet: Duration::from_secs(2),
            seed: 20,
        }
    }
}

/// What a run did and found.
pub struct Report {
    pub operations: Counts,
    pub faults: BTreeMap<Fault, usize>,
    pub keys: usize,
    pub revisions: usize,
    pub check_time: Duration,
    pub anomalies: Vec<String>,
}

impl Report {
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(fault, n)| format!("{fault:?} x{n}"))
            .collect();
        format!(
            "operations: {} ok, {} failed, {} unknown on {} keys; {} revisions; faults: {} ({}); linearizability checked in {:.2?}; anomalies: {}",
            self.operations.ok,
            self.operations.failed,
            self.operations.unknown,
            self.keys,
            self.revisions,
            self.faults.values().sum::<usize>(),
            faults.join(", "),
            self.check_time,
            if self.anomalies.is_empty() {
                "none".to_string()
            } else {
                self.anomalies.join("\n  ")
            }
        )
    }
}

/// Runs the suite in `dir` (agents, logs and rendered files go there).
pub fn run(dir: &Path, settings: &Settings) -> Report {
    let (mut cluster, files) = start_cluster(dir);
    let endpoints: Vec<String> = (0..AGENTS).map(|i| cluster.endpoint(i)).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let workload = Arc::new(Workload::new(settings.keys, settings.key_life));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watched: Vec<Arc<Mutex<Watched>>> = (0..AGENTS).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (endpoint, watched) in endpoints.iter().zip(&watched) {
        let task = clients::watcher(endpoint.clone(), watched.clone(), watch_stop.clone());
        tasks.push(runtime.spawn(task));
    }
    let clients: Vec<_> = (0..settings.clients)
        .map(|id| {
            let endpoint = endpoints[id % AGENTS].clone();
            runtime.spawn(clients::client(id, endpoint, workload.clone()))
        })
        .collect();

    let nemesis_stop = Arc::new(AtomicBool::new(false));
    let nemesis = {
        let stop = nemesis_stop.clone();
        let (hold, quiet, seed) = (settings.hold, settings.quiet, settings.seed);
        let recorder = workload.recorder.clone();
        std::thread::spawn(move || {
            std::thread::sleep(quiet);
            let clock = move || recorder.now() as f64 / 1e9;
            let (faults, unexpected) =
                nemesis::run(&mut cluster, (hold, quiet), seed, &stop, &clock);
            (cluster, faults, unexpected)
        })
    };
    std::thread::sleep(settings.duration);
    nemesis_stop.store(true, Ordering::Relaxed);
    let (mut cluster, faults, mut anomalies) = match nemesis.join() {
        Ok(done) => done,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    anomalies.extend(nemesis::heal(&mut cluster));
    // A calm end, as Jepsen's final reads: the healed cluster serves.
    std::thread::sleep(Duration::from_secs(2));
    workload.stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for client in clients {
            let _ = client.await;
        }
    });

    let history = workload.recorder.history();
    let started = Instant::now();
    let mut stuck_op = None;
    match check(&history) {
        Verdict::Linearizable => {}
        Verdict::NotLinearizable {
            key,
            explanation,
            stuck,
        } => {
            anomalies.push(format!("not linearizable on {key}: {explanation}"));
            write_key_history(dir, &history, &key);
            stuck_op = stuck;
        }
        Verdict::Inconclusive { key, steps } => anomalies.push(format!(
            "the linearizability search on {key} gave up after {steps} steps"
        )),
    }
    let check_time = started.elapsed();
    let leader = cluster.wait_for_leader();
    let replays = runtime.block_on(converged_replays(&cluster, leader));
    if let Some(stuck) = &stuck_op {
        anomalies.push(post_mortem(&history, stuck, &replays[0]));
    }
    check_acknowledged(&history, &replays, &mut anomalies);
    runtime.block_on(check_watchers(&watched, &replays, &mut anomalies));
    watch_stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    runtime.block_on(check_rendered(&cluster, &files, &mut anomalies));
    check_logs(dir, &mut anomalies);
    for i in 0..AGENTS {
        cluster.stop(i);
    }
    Report {
        operations: history.counts(),
        faults,
        keys: history.by_key().len(),
        revisions: replays[0].len(),
        check_time,
        anomalies,
    }
}

/// Three voters and an edge, each rendering [`PREFIX`] into its own file.
fn start_cluster(dir: &Path) -> (Cluster, Vec<PathBuf>) {
    let template = dir.join("values.j2");
    std::fs::write(&template, TEMPLATE).unwrap();
    let (mut head, mut extra, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..AGENTS {
        let out = dir.join(format!("out{}", i + 1));
        std::fs::create_dir_all(&out).unwrap();
        let file = out.join("values.txt");
        head.push(format!("render_root = {:?}", out.display().to_string()));
        extra.push(format!(
            "[[render]]\nprefix = {PREFIX:?}\ntemplate = {:?}\ndest = {:?}\ndebounce = \"1ms\"\n",
            template.display().to_string(),
            file.display().to_string()
        ));
        files.push(file);
    }
    let gossip = "probe_interval = \"500ms\"\nprobe_timeout = \"200ms\"";
    let cluster = fleet_with(
        dir,
        AGENTS - VOTERS,
        |_| String::new(),
        gossip,
        &extra,
        &head,
    );
    (cluster, files)
}

/// One event of a member's history: (revision, key, value).
type Event = (i64, String, String);

/// Waits until every member has applied the leader's last revision, then
/// replays each member's whole history of [`PREFIX`] (a fresh watch from
/// revision 1).
async fn converged_replays(cluster: &Cluster, leader: usize) -> Vec<Vec<Event>> {
    let mut client = cluster.client(leader).await;
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .expect("the healed cluster serves a linearizable read");
    let last = resp
        .kvs()
        .iter()
        .map(|kv| kv.mod_revision())
        .max()
        .unwrap_or(0);
    let mut replays = Vec::new();
    for i in 0..AGENTS {
        wait_for_revision(cluster, i, last).await;
        replays.push(replay(cluster, i, last).await);
    }
    replays
}

async fn replay(cluster: &Cluster, i: usize, last: i64) -> Vec<Event> {
    let mut client = cluster.client(i).await;
    let options = WatchOptions::new().with_prefix().with_start_revision(1);
    let mut stream = client.watch(PREFIX, Some(options)).await.unwrap();
    let mut events = Vec::new();
    // A write whose client gave up may still commit after `last` was
    // read: the histories are compared up to `last`, which every
    // acknowledged write precedes (the clients had stopped).
    while events.last().is_none_or(|(rev, _, _)| *rev < last) {
        let resp = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("a replay from revision 1 arrives")
            .unwrap()
            .expect("the replay stream stays open");
        for event in resp.events() {
            let kv = event.kv().unwrap();
            events.push((
                kv.mod_revision(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            ));
        }
    }
    events.retain(|(rev, _, _)| *rev <= last);
    events
}

/// Every acknowledged write is in every member's history at its revision,
/// and the members' histories are the same.
fn check_acknowledged(
    history: &edgeconf_faults::History,
    replays: &[Vec<Event>],
    anomalies: &mut Vec<String>,
) {
    for (i, replay) in replays.iter().enumerate() {
        if replay != &replays[0] {
            anomalies.push(format!(
                "member n{} has another history than n1 ({} events against {})",
                i + 1,
                replay.len(),
                replays[0].len()
            ));
        }
        let events: HashSet<&Event> = replay.iter().collect();
        for entry in &history.entries {
            let Some(value) = entry.acknowledged_write() else {
                continue;
            };
            let event = (entry.revision, entry.key.clone(), value.to_string());
            if !events.contains(&event) {
                anomalies.push(format!(
                    "acknowledged write lost on n{}: {} = {value} at revision {}",
                    i + 1,
                    entry.key,
                    entry.revision
                ));
            }
        }
    }
}

/// Each member's watcher, which lived through the faults, saw exactly the
/// member's history: every revision once, in order.
async fn check_watchers(
    watched: &[Arc<Mutex<Watched>>],
    replays: &[Vec<Event>],
    anomalies: &mut Vec<String>,
) {
    for (i, (watched, replay)) in watched.iter().zip(replays).enumerate() {
        let last = replay.last().map_or(0, |e| e.0);
        let deadline = Instant::now() + TIMEOUT;
        while watched.lock().unwrap().events.last().map_or(0, |e| e.0) < last
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let watched = watched.lock().unwrap();
        anomalies.extend(watched.anomalies.iter().cloned());
        let seen: Vec<Event> = watched
            .events
            .iter()
            .filter(|e| e.0 <= last)
            .cloned()
            .collect();
        if &seen != replay {
            let missing = replay
                .iter()
                .filter(|e| !watched.events.contains(e))
                .count();
            anomalies.push(format!(
                "the watcher on n{} saw {} events, its member's history holds {} ({missing} never delivered)",
                i + 1,
                seen.len(),
                replay.len()
            ));
        }
    }
}

/// Each member's rendered file ends equal to its store.
async fn check_rendered(cluster: &Cluster, files: &[PathBuf], anomalies: &mut Vec<String>) {
    for (i, file) in files.iter().enumerate() {
        let mut stored: Vec<(String, (String, i64))> =
            local_state(cluster, i, PREFIX).await.into_iter().collect();
        stored.sort();
        let expected: Vec<String> = stored.into_iter().map(|(_, (value, _))| value).collect();
        let rendered = || {
            std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let deadline = Instant::now() + TIMEOUT;
        while rendered() != expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if rendered() != expected {
            anomalies.push(format!(
                "n{}'s rendered file {} differs from its store ({} values rendered, {} stored)",
                i + 1,
                file.display(),
                rendered().len(),
                expected.len()
            ));
        }
    }
}

/// What the history and the converged store say about the operation the
/// linearizability search could not place: who wrote the value it saw,
/// and where (and how often) that value stands in the key's history.
fn post_mortem(history: &edgeconf_faults::History, stuck: &Entry, replay: &[Event]) -> String {
    use edgeconf_faults::history::{Op, Outcome};
    let ms = |ns: u64| ns as f64 / 1e6;
    let Outcome::Read(Some(seen)) = stuck.outcome else {
        return format!("post-mortem: the stuck operation is {stuck:?}");
    };
    let writers: Vec<String> = history
        .entries
        .iter()
        .filter(|e| matches!(e.op, Op::Write(v) | Op::Cas { new: v, .. } if v == seen))
        .map(|e| {
            format!(
                "client {} {:?} -> {:?} invoked {:.1} ms answered {:.1} ms rev {}",
                e.client,
                e.op,
                e.outcome,
                ms(e.invoked),
                ms(e.completed),
                e.revision
            )
        })
        .collect();
    let events: Vec<&Event> = replay.iter().filter(|e| e.1 == stuck.key).collect();
    let at: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.2 == seen.to_string())
        .map(|(i, _)| i)
        .collect();
    let around = at.first().map_or(String::new(), |&i| {
        events[i.saturating_sub(3)..(i + 6).min(events.len())]
            .iter()
            .map(|(rev, _, value)| format!("{rev}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    format!(
        "post-mortem of the read of {seen} by client {} ({:.1}..{:.1} ms): written by [{}]; the value stands {} time(s) in the key's history; around it: {around}",
        stuck.client,
        ms(stuck.invoked),
        ms(stuck.completed),
        writers.join("; "),
        at.len()
    )
}

/// Writes every operation on `key`, in invocation order, to
/// `history-of-<key>.txt` in `dir`, for a failed run's post-mortem.
fn write_key_history(dir: &Path, history: &edgeconf_faults::History, key: &str) {
    let mut entries: Vec<_> = history.entries.iter().filter(|e| e.key == key).collect();
    entries.sort_by_key(|e| e.invoked);
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{:>10} {:>10} client {} {:?} -> {:?} rev {}",
                e.invoked, e.completed, e.client, e.op, e.outcome, e.revision
            )
        })
        .collect();
    let name = format!("history-of-{}.txt", key.trim_matches('/').replace('/', "-"));
    let _ = std::fs::write(dir.join(name), lines.join("\n"));
}

/// No agent panicked in any of its lives.
fn check_logs(dir: &Path, anomalies: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("agent-") && name.ends_with(".log")) {
            continue;
        }
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            anomalies.push(format!("a panic in {name}: {line}"));
        }
    }
}
