//! The workload: clients doing reads, writes and compare-and-set on a few
//! keys through the etcd API, each bound to one member, recording every
//! operation; and one watcher per member, resuming after each drop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeconf_faults::history::{Entry, Op, Outcome, Recorder};
use etcd_client::{Client, Compare, CompareOp, TxnOp, WatchOptions};

/// Keys live under this prefix; every member renders it.
pub const PREFIX: &str = "/jepsen/";
/// How long a request may take before its outcome is unknown (several
/// election timeouts: most requests caught in an election still answer).
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the clients share.
pub struct Workload {
    pub recorder: Recorder,
    pub stop: AtomicBool,
    started: Instant,
    keys: usize,
    /// Clients move on to fresh keys this often, so that each key's
    /// history stays small enough to check (as Jepsen's independent keys).
    key_life: Duration,
    next_value: AtomicU64,
    /// The value last seen of each key: what a compare-and-set expects.
    last_seen: Mutex<HashMap<String, u64>>,
}

impl Workload {
    pub fn new(keys: usize, key_life: Duration) -> Workload {
        Workload {
            recorder: Recorder::new(),
            stop: AtomicBool::new(false),
            started: Instant::now(),
            keys,
            key_life,
            next_value: AtomicU64::new(1),
            last_seen: Mutex::default(),
        }
    }

    fn key(&self, rng: &mut Rng) -> String {
        let generation = self.started.elapsed().as_millis() / self.key_life.as_millis().max(1);
        format!("{PREFIX}{generation:04}/{}", rng.below(self.keys as u64))
    }

    fn op(&self, key: &str, rng: &mut Rng) -> Op {
        let fresh = || self.next_value.fetch_add(1, Ordering::Relaxed);
        match rng.below(10) {
            0..=3 => Op::Read,
            4..=6 => Op::Write(fresh()),
            _ => {
                let seen = self.last_seen.lock().unwrap().get(key).copied();
                Op::Cas {
                    expected: seen.unwrap_or(0),
                    new: fresh(),
                }
            }
        }
    }

    fn saw(&self, key: &str, value: u64) {
        self.last_seen
            .lock()
            .unwrap()
            .insert(key.to_string(), value);
    }
}

/// One client: bound to `endpoint` (a member), until the workload stops.
pub async fn client(id: usize, endpoint: String, workload: Arc<Workload>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
    let mut connection: Option<Client> = None;
    while !workload.stop.load(Ordering::Relaxed) {
        let Some(client) = connection.as_mut() else {
            connection = connect(&endpoint).await;
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let key = workload.key(&mut rng);
        let op = workload.op(&key, &mut rng);
        let invoked = workload.recorder.now();
        let answer = tokio::time::timeout(OP_TIMEOUT, perform(client, &key, op)).await;
        let completed = workload.recorder.now();
        let (outcome, revision) = match answer {
            Ok(Ok(done)) => done,
            Ok(Err(error)) => (classify(op, &error), 0),
            Err(_) => (unknown_unless_read(op), 0),
        };
        match outcome {
            Outcome::Read(Some(value)) => workload.saw(&key, value),
            Outcome::Written | Outcome::Cas(true) => {
                if let Op::Write(value) | Op::Cas { new: value, .. } = op {
                    workload.saw(&key, value);
                }
            }
            // The connection may be wedged (a paused member): start over.
            Outcome::Unknown | Outcome::Failed => connection = None,
            _ => {}
        }
        if outcome == Outcome::Failed {
            // Most often its member is down: do not spin on it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        workload.recorder.record(Entry {
            client: id,
            key,
            op,
            outcome,
            invoked,
            completed,
            revision,
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn connect(endpoint: &str) -> Option<Client> {
    let connecting = Client::connect([format!("http://{endpoint}")], None);
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .ok()?
        .ok()
}

/// Sends one operation; a read is linearizable (etcd's default).
async fn perform(
    client: &mut Client,
    key: &str,
    op: Op,
) -> Result<(Outcome, i64), etcd_client::Error> {
    let revision =
        |header: Option<&etcd_client::ResponseHeader>| header.map_or(0, |h| h.revision());
    match op {
        Op::Read => {
            let resp = client.get(key, None).await?;
            let value = resp.kvs().first().map(|kv| parse(kv.value()));
            Ok((Outcome::Read(value), 0))
        }
        Op::Write(value) => {
            let resp = client.put(key, value.to_string(), None).await?;
            Ok((Outcome::Written, revision(resp.header())))
        }
        Op::Cas { expected, new } => {
            let txn = etcd_client::Txn::new()
                .when([Compare::value(key, CompareOp::Equal, expected.to_string())])
                .and_then([TxnOp::put(key, new.to_string(), None)]);
            let resp = client.txn(txn).await?;
            Ok((Outcome::Cas(resp.succeeded()), revision(resp.header())))
        }
    }
}

/// Values are decimal numbers; anything else reads as 0 (which no client
/// writes, so the checker refuses it).
fn parse(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An error's meaning for the history: refused before it reached raft
/// (certainly no effect), or lost on the way (unknown).
fn classify(op: Op, error: &etcd_client::Error) -> Outcome {
    use tonic::Code;
    if let etcd_client::Error::GRpcStatus(status) = error {
        let refused_up_front = matches!(
            status.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::ResourceExhausted
                | Code::OutOfRange
        );
        let never_sent =
            status.code() == Code::Unavailable && status.message().contains("tcp connect error");
        if refused_up_front || never_sent {
            return Outcome::Failed;
        }
    }
    unknown_unless_read(op)
}

fn unknown_unless_read(op: Op) -> Outcome {
    match op {
        Op::Read => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// What a watcher saw: (revision, key, value) in arrival order, and the
/// anomalies it noticed as it went (a revision again, or out of order).
#[derive(Default)]
pub struct Watched {
    pub events: Vec<(i64, String, String)>,
    pub anomalies: Vec<String>,
}

/// Watches [`PREFIX`] on one member from revision 1 until `stop`, resuming
/// after the last revision seen whenever the stream or member goes away.
pub async fn watcher(endpoint: String, watched: Arc<Mutex<Watched>>, stop: Arc<AtomicBool>) {
    let mut next = 1;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut client) = connect(&endpoint).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(OP_TIMEOUT, client.watch(PREFIX, Some(options))).await
        else {
            continue;
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let message = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
            let resp = match message {
                Err(_) => continue, // quiet: look at `stop` again
                Ok(Ok(Some(resp))) if !resp.canceled() => resp,
                Ok(_) => break, // ended or failed: resume elsewhere in time
            };
            let mut watched = watched.lock().unwrap();
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let revision = kv.mod_revision();
                if revision < next {
                    watched.anomalies.push(format!(
                        "{endpoint}: revision {revision} delivered after {}",
                        next - 1
                    ));
                }
                next = next.max(revision + 1);
                watched.events.push((
                    revision,
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                ));
            }
        }
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
