//! Nemeses on loopback: each fault is injected into real agent processes,
//! held, and healed. Runs on its own thread and owns the cluster (starting
//! and killing agents blocks).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::clients::Rng;
use crate::common::cluster::Cluster;

/// The faults, in the order a run cycles through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// kill -9 of the leader, restarted after the hold.
    KillLeader,
    /// kill -9 of any agent, voter or edge.
    KillRandom,
    /// kill -9 of the edge agent: it must catch up from the feed.
    KillEdge,
    /// SIGSTOP of the leader for longer than the election timeout.
    PauseLeader,
    /// The leader cut off from every peer, both ways.
    PartitionLeader,
    /// The leader hears its peers but they do not hear it.
    AsymmetricLeader,
    /// The leader's WAL fsyncs fail: it must stop, and restart whole.
    FailingFsync,
    /// A voter's disk is full for its WAL.
    DiskFull,
    /// kill -9, then garbage after the WAL's last record (a torn write).
    TornWalTail,
    /// An agent's wall clock jumps an hour ahead, then back.
    ClockJump,
}

pub const ALL: [Fault; 10] = [
    Fault::KillLeader,
    Fault::KillEdge,
    Fault::PauseLeader,
    Fault::PartitionLeader,
    Fault::FailingFsync,
    Fault::KillRandom,
    Fault::AsymmetricLeader,
    Fault::TornWalTail,
    Fault::DiskFull,
    Fault::ClockJump,
];

/// Injects faults one after another until `stop` (but at least one of
/// each kind), each held for `hold` and followed by `quiet` without faults.
/// Returns how many of each it injected, and the agents that exited
/// without being made to.
/// `clock` is the history's (seconds): the log says when each fault began
/// and ended, to line them up with the operations.
pub fn run(
    cluster: &mut Cluster,
    (hold, quiet): (Duration, Duration),
    seed: u64,
    stop: &AtomicBool,
    clock: &dyn Fn() -> f64,
) -> (BTreeMap<Fault, usize>, Vec<String>) {
    let mut rng = Rng(seed | 1);
    let (mut injected, mut unexpected) = (BTreeMap::new(), Vec::new());
    // For chasing a few faults: EDGECONF_FAULTS_ONLY=KillLeader,PauseLeader
    // cycles through these alone.
    let only = std::env::var("EDGECONF_FAULTS_ONLY").ok();
    let faults: Vec<Fault> = ALL
        .into_iter()
        .filter(|f| {
            only.as_ref()
                .is_none_or(|names| names.split(',').any(|name| format!("{f:?}") == name))
        })
        .collect();
    for fault in faults.iter().cycle() {
        if stop.load(Ordering::Relaxed) && injected.len() == faults.len() {
            break;
        }
        // Voters first in the slots; agents past them are edges (no WAL).
        let (voters, agents) = (3, cluster.slots.len() as u64);
        let leader = cluster.wait_for_leader();
        let target = match fault {
            Fault::KillRandom | Fault::ClockJump => rng.below(agents) as usize,
            Fault::DiskFull | Fault::TornWalTail => rng.below(voters) as usize,
            Fault::KillEdge => voters as usize + rng.below(agents - voters) as usize,
            _ => leader,
        };
        let began = clock();
        inject(cluster, *fault, target, hold);
        *injected.entry(*fault).or_default() += 1;
        unexpected.extend(heal(cluster));
        eprintln!(
            "nemesis: {fault:?} on {} (leader {}) from {began:.3} s to {:.3} s",
            cluster.slots[target].name,
            cluster.slots[leader].name,
            clock()
        );
        std::thread::sleep(quiet);
    }
    (injected, unexpected)
}

fn inject(cluster: &mut Cluster, fault: Fault, target: usize, hold: Duration) {
    let switch = |name: &str| cluster.slots[target].data_dir.join(name);
    match fault {
        Fault::KillLeader | Fault::KillRandom | Fault::KillEdge => {
            cluster.kill9(target);
            std::thread::sleep(hold);
            cluster.run(target);
        }
        Fault::PauseLeader => {
            let agent = cluster.agents[target].as_ref().unwrap();
            agent.signal("STOP");
            std::thread::sleep(hold);
            agent.signal("CONT");
        }
        Fault::PartitionLeader | Fault::AsymmetricLeader | Fault::ClockJump => {
            let (name, contents) = match fault {
                Fault::PartitionLeader => ("fault-partition", ""),
                Fault::AsymmetricLeader => ("fault-partition-out", ""),
                _ => ("fault-clock", "3600000"),
            };
            std::fs::write(switch(name), contents).unwrap();
            std::thread::sleep(hold);
            if fault == Fault::ClockJump {
                std::fs::write(switch(name), "-3600000").unwrap();
                std::thread::sleep(hold);
            }
            std::fs::remove_file(switch(name)).unwrap();
        }
        Fault::FailingFsync | Fault::DiskFull => {
            let contents = if fault == Fault::DiskFull {
                "full"
            } else {
                "fsync"
            };
            std::fs::write(switch("fault-disk"), contents).unwrap();
            // The member fails stop at its next write (clients keep writing).
            let deadline = Instant::now() + hold.max(Duration::from_secs(5));
            let agent = cluster.agents[target].as_mut().unwrap();
            while !agent.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let exited = agent.exited();
            std::fs::remove_file(switch("fault-disk")).unwrap();
            assert!(
                exited,
                "{} kept running with a failing WAL disk ({contents})",
                cluster.slots[target].name
            );
            let log = agent.log();
            assert!(
                log.contains("consensus stopped"),
                "{} exited without saying why:\n{log}",
                cluster.slots[target].name
            );
            cluster.run(target);
        }
        Fault::TornWalTail => {
            cluster.kill9(target);
            tear_wal_tail(&cluster.slots[target].data_dir);
            std::thread::sleep(hold);
            cluster.run(target);
        }
    }
}

/// Heals every fault: no switch left, every member running and resumed.
/// Each fault restarts the agents it stopped, so an agent found exited
/// here stopped by itself: it is restarted, and returned as an anomaly.
pub fn heal(cluster: &mut Cluster) -> Vec<String> {
    let mut unexpected = Vec::new();
    for i in 0..cluster.slots.len() {
        for switch in [
            "fault-partition",
            "fault-partition-out",
            "fault-disk",
            "fault-clock",
        ] {
            let _ = std::fs::remove_file(cluster.slots[i].data_dir.join(switch));
        }
        let running = cluster.agents[i].as_mut().is_some_and(|a| !a.exited());
        if running {
            cluster.agents[i].as_ref().unwrap().signal("CONT");
            continue;
        }
        if let Some(agent) = &cluster.agents[i] {
            let log = agent.log();
            let last = log
                .lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("");
            unexpected.push(format!(
                "{} exited by itself: {last}",
                cluster.slots[i].name
            ));
        }
        cluster.run(i);
    }
    unexpected
}

/// Writes what a crash in the middle of an append leaves: a record header
/// that promises more than follows, after the last complete record of the
/// newest WAL segment (records are `[len u32][crc u32][payload]`).
fn tear_wal_tail(data_dir: &Path) {
    let Some(segment) = std::fs::read_dir(data_dir.join("raft-wal"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
    else {
        panic!("no WAL segment in {} to tear", data_dir.display());
    };
    let bytes = std::fs::read(&segment).unwrap();
    let mut end = 0;
    while let Some(header) = bytes.get(end..end + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        if len == 0 || end + 8 + len > bytes.len() {
            break;
        }
        end += 8 + len;
    }
    let mut torn = Vec::new();
    torn.extend_from_slice(&4096u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 100]);
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.write_all_at(&torn, end as u64).unwrap();
}
