//! Upkeep: what keeps a store within its bounds and its copies honest.
//!
//! Every voter announces, through gossip, its store's size and, every
//! `corrupt_check_interval`, its history checksum (etcd's HashKV) at its
//! current revision. The leader reads the announcements of raft voters,
//! raises NOSPACE for one over `quota_backend_bytes` and CORRUPT for one
//! whose checksum differs from its own at the same revision
//! ([`policy::alarms_to_raise`]), and compacts by the auto-compaction
//! settings ([`policy::AutoCompactor`]).
//!
//! Who may send a report: any gossip member announces its own; the leader
//! reads only records whose name and peer URL are a raft voter's (gossip
//! binds a record to its member's key). A voter with a stolen key can make
//! the leader raise an alarm against that voter alone.

pub mod alarms;
pub mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy::{AutoCompactor, Report, Retention};

use crate::consensus::Node;
use crate::gossip::{Membership, StoreReport};
use crate::store::{Command, KvHash};

/// The upkeep settings of the TOML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `quota_backend_bytes`.
    pub quota_bytes: u64,
    /// `corrupt_check_interval` (`None`: "0s", off).
    pub corrupt_check: Option<Duration>,
    /// `auto_compaction_mode` and `auto_compaction_retention` (`None`: off).
    pub retention: Option<Retention>,
}

const TICK: Duration = Duration::from_secs(1);

/// Runs until `stopped`; only voters run it.
pub async fn run(
    node: Arc<Node>,
    membership: Arc<Membership>,
    settings: Settings,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let start = Instant::now();
    let mut next_check = start;
    let mut compactor = settings.retention.map(AutoCompactor::new);
    let mut last_report = StoreReport::default();
    // The checksums already compared: each announcement is checked once
    // (a full scan of the leader's store each), not at every tick.
    let mut compared: HashSet<(u64, i64, u32)> = HashSet::new();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let store = node.store().clone();
        let mut report = StoreReport {
            db_size: store.size_bytes(),
            ..last_report
        };
        if let Some(every) = settings.corrupt_check {
            if Instant::now() >= next_check {
                next_check = Instant::now() + every;
                let hashed = tokio::task::spawn_blocking(move || store.hash_kv(0)).await;
                match hashed {
                    Ok(Ok(hash)) => {
                        report.hash = hash.hash;
                        report.revision = hash.revision;
                        report.compact_revision = hash.compact_revision;
                    }
                    Ok(Err(err)) => tracing::warn!(error = %err, "cannot checksum the store"),
                    Err(err) => tracing::warn!(error = %err, "the checksum task failed"),
                }
            }
        }
        last_report = report;
        membership.update_meta(|meta| meta.store = report);
        if !node.is_leader() {
            continue;
        }
        raise_alarms(&node, &membership, settings.quota_bytes, &mut compared).await;
        if let Some(compactor) = &mut compactor {
            compact(&node, compactor, start.elapsed()).await;
        }
    }
}

/// The reports of raft voters: the leader's own (its size; comparing its
/// checksum with itself tells nothing), the others' as gossip carries them.
fn voter_reports(node: &Node, membership: &Membership) -> Vec<Report> {
    let Ok(members) = node.members() else {
        return Vec::new();
    };
    let own = node.identity().member_id;
    let records = membership.members();
    members
        .into_iter()
        .filter(|(_, member)| !member.is_learner)
        .filter_map(|(id, member)| {
            if id == own {
                return Some(Report {
                    member: id,
                    name: member.name,
                    db_size: node.store().size_bytes(),
                    kv_hash: None,
                });
            }
            // The gossip record that speaks for this member: its name and a
            // peer URL of its replicated record (ids are not derived again
            // from URLs: `member update` moves a member, its id stays).
            let record = records.iter().find(|record| {
                *record.id == *member.name && member.peer_urls.contains(&record.meta.peer_url)
            })?;
            let store = record.meta.store;
            Some(Report {
                member: id,
                name: member.name,
                db_size: store.db_size,
                kv_hash: (store.revision > 0).then_some(KvHash {
                    hash: store.hash,
                    revision: store.revision,
                    compact_revision: store.compact_revision,
                }),
            })
        })
        .collect()
}

async fn raise_alarms(
    node: &Arc<Node>,
    membership: &Membership,
    quota: u64,
    compared: &mut HashSet<(u64, i64, u32)>,
) {
    let mut reports = voter_reports(node, membership);
    for report in &mut reports {
        if let Some(hash) = report.kv_hash {
            if !compared.insert((report.member, hash.revision, hash.hash)) {
                report.kv_hash = None;
            }
        }
    }
    if compared.len() > 1024 {
        compared.clear();
    }
    let store = node.store().clone();
    let decided = tokio::task::spawn_blocking(move || {
        let active = alarms::active(&store)?;
        // One checksum per revision asked about.
        let mut own: HashMap<i64, Option<KvHash>> = HashMap::new();
        let own_hash_at = |revision: i64| {
            *own.entry(revision)
                .or_insert_with(|| store.hash_kv(revision).ok())
        };
        Ok::<_, crate::store::StoreError>(policy::alarms_to_raise(
            quota,
            &reports,
            own_hash_at,
            &active,
        ))
    })
    .await;
    let raise = match decided {
        Ok(Ok(raise)) => raise,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot read the alarms");
            return;
        }
        Err(err) => {
            tracing::warn!(error = %err, "the alarm task failed");
            return;
        }
    };
    for (member, alarm, reason) in raise {
        tracing::error!(member = %format!("{member:x}"), alarm = alarm.name(), %reason, "raising an alarm");
        if let Err(err) = node.propose(alarms::raise(member, alarm, &reason)).await {
            tracing::warn!(error = %err, alarm = alarm.name(), "cannot raise the alarm");
        }
    }
}

async fn compact(node: &Node, compactor: &mut AutoCompactor, elapsed: Duration) {
    let store = node.store();
    let Ok((revision, compacted)) = store.revisions() else {
        return;
    };
    let Some(target) = compactor.tick(elapsed, revision, compacted) else {
        return;
    };
    match node.propose(Command::Compact { revision: target }).await {
        Ok(_) => tracing::info!(revision = target, "auto-compacted"),
        Err(err) => tracing::warn!(error = %err, revision = target, "auto-compaction failed"),
    }
}
