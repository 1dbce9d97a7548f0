//! Fault injection, for the partition, crash and fault-suite tests.
//!
//! Off unless the agent's environment sets `EDGECONF_FAULT_INJECTION`.
//! Then files in the data dir are switches, read every 50 ms. Only a local
//! user who can write the data dir (0700, the agent's own user) can flip
//! them; no peer or client can.
//!
//! | file                  | while it exists                                    |
//! |-----------------------|----------------------------------------------------|
//! | `fault-partition`     | every peer message in or out is dropped            |
//! | `fault-partition-out` | raft messages this member sends are dropped; it    |
//! |                       | still hears its peers (an asymmetric partition)    |
//! | `fault-drop-acks`     | this member's acknowledgements of appends are      |
//! |                       | dropped: its leader never learns what it stored    |
//! | `fault-raft-crash`    | the raft thread panics (once)                      |
//! | `fault-disk`          | `fsync`: WAL syncs fail; `full`: WAL writes fail   |
//! |                       | with "no space left on device"; `slow`: each WAL   |
//! |                       | sync takes [`SLOW_FSYNC`] longer                   |
//! | `fault-clock`         | its number (ms, may be negative) is added to the   |
//! |                       | wall clock the agent stamps revisions and rollouts |
//! |                       | with                                               |
//! | `fault-corrupt`       | the store's newest value is changed in place, once |
//! |                       | (bit rot the corruption check must catch)          |

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::consensus::Node;

/// Set in the environment to turn the switches on.
pub const ENV: &str = "EDGECONF_FAULT_INJECTION";

pub const PARTITION: &str = "fault-partition";
pub const PARTITION_OUT: &str = "fault-partition-out";
pub const DROP_ACKS: &str = "fault-drop-acks";
pub const RAFT_CRASH: &str = "fault-raft-crash";
pub const DISK: &str = "fault-disk";
pub const CLOCK: &str = "fault-clock";
pub const CORRUPT: &str = "fault-corrupt";

/// What WAL writes do (one agent per process: a process-wide switch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskFault {
    Healthy = 0,
    FailingFsync = 1,
    Full = 2,
    Slow = 3,
}

/// How much longer a WAL sync takes on a `slow` disk.
pub const SLOW_FSYNC: Duration = Duration::from_millis(200);

static DISK_FAULT: AtomicU8 = AtomicU8::new(DiskFault::Healthy as u8);
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The disk fault in force (`Healthy` unless injected).
pub fn disk() -> DiskFault {
    match DISK_FAULT.load(Ordering::Relaxed) {
        1 => DiskFault::FailingFsync,
        2 => DiskFault::Full,
        3 => DiskFault::Slow,
        _ => DiskFault::Healthy,
    }
}

/// How far the wall clock is jumped (0 unless injected).
pub fn clock_offset_ms() -> i64 {
    CLOCK_OFFSET_MS.load(Ordering::Relaxed)
}

/// Whether the environment turns fault injection on.
pub fn enabled() -> bool {
    std::env::var_os(ENV).is_some()
}

/// Follows the switches in `data_dir` for as long as the agent runs.
pub async fn watch_switches(node: Arc<Node>, data_dir: PathBuf) {
    let path = |name: &str| data_dir.join(name);
    tracing::warn!(data_dir = %data_dir.display(), "fault injection enabled");
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let (mut crashed, mut corrupted) = (false, false);
    loop {
        tick.tick().await;
        let transport = node.transport();
        transport.set_isolated(path(PARTITION).exists());
        transport.set_muted(path(PARTITION_OUT).exists());
        transport.set_acks_dropped(path(DROP_ACKS).exists());
        if !crashed && path(RAFT_CRASH).exists() {
            tracing::warn!("fault injection: crashing the raft thread");
            node.inject_crash();
            crashed = true;
        }
        if !corrupted && path(CORRUPT).exists() {
            corrupted = true;
            match node.store().inject_corruption() {
                Ok(key) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key.unwrap_or_default()), "fault injection: corrupted the newest value in place")
                }
                Err(err) => {
                    tracing::warn!(error = %err, "fault injection: cannot corrupt the store")
                }
            }
        }
        set_disk(read_switch(&path(DISK)).as_deref());
        set_clock(read_switch(&path(CLOCK)).as_deref());
    }
}

fn read_switch(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn set_disk(switch: Option<&str>) {
    let fault = match switch {
        None => DiskFault::Healthy,
        Some("full") => DiskFault::Full,
        Some("slow") => DiskFault::Slow,
        Some(_) => DiskFault::FailingFsync,
    };
    if DISK_FAULT.swap(fault as u8, Ordering::Relaxed) != fault as u8 {
        tracing::warn!(?fault, "fault injection: WAL disk");
    }
}

fn set_clock(switch: Option<&str>) {
    let offset = switch.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    if CLOCK_OFFSET_MS.swap(offset, Ordering::Relaxed) != offset {
        tracing::warn!(offset_ms = offset, "fault injection: wall clock jumped");
    }
}
