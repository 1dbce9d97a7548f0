//! What the leader's upkeep decides, as pure functions of what it sees:
//! which alarms to raise, and when to compact. Tested without a cluster.

use std::collections::VecDeque;
use std::time::Duration;

use super::alarms::{Active, Alarm};
use crate::store::KvHash;

/// What one voter reports of its store (through gossip).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub member: u64,
    pub name: String,
    pub db_size: u64,
    /// Its history checksum at some revision, if it took one yet.
    pub kv_hash: Option<KvHash>,
}

/// The alarms to raise now (not yet active), with why: NOSPACE for a voter
/// whose store is larger than `quota` bytes; CORRUPT for one whose
/// checksum differs from the leader's own at the same revision and
/// compaction revision (`own_hash_at` gives the leader's; `None` when it
/// cannot, say the revision is compacted away or not reached yet).
pub fn alarms_to_raise(
    quota: u64,
    reports: &[Report],
    mut own_hash_at: impl FnMut(i64) -> Option<KvHash>,
    active: &[Active],
) -> Vec<(u64, Alarm, String)> {
    let is_active = |member: u64, alarm: Alarm| {
        active
            .iter()
            .any(|a| a.member == member && a.alarm == alarm)
    };
    let mut raise = Vec::new();
    for report in reports {
        if report.db_size > quota && !is_active(report.member, Alarm::NoSpace) {
            raise.push((
                report.member,
                Alarm::NoSpace,
                format!(
                    "{}'s store is {} bytes, over quota_backend_bytes ({quota}): compact, defragment, then disarm",
                    report.name, report.db_size
                ),
            ));
        }
        let Some(theirs) = report.kv_hash else {
            continue;
        };
        if is_active(report.member, Alarm::Corrupt) {
            continue;
        }
        let Some(ours) = own_hash_at(theirs.revision) else {
            continue;
        };
        if ours.compact_revision == theirs.compact_revision && ours.hash != theirs.hash {
            raise.push((
                report.member,
                Alarm::Corrupt,
                format!(
                    "{}'s history checksum at revision {} is {:08x}, the leader's {:08x}: its store differs; replace the member (remove it, wipe its data dir, add it again)",
                    report.name, theirs.revision, theirs.hash, ours.hash
                ),
            ));
        }
    }
    raise
}

/// etcd's auto-compaction settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Keep this much time of history (`auto_compaction_mode = "periodic"`).
    Periodic(Duration),
    /// Keep this many revisions (`"revision"`).
    Revisions(i64),
}

/// Decides when the leader compacts, as etcd's compactors do: a periodic
/// retention samples the revision every tenth of it and compacts to the
/// revision it had one retention ago; a revision retention compacts to the
/// current revision minus it, once that has moved a tenth of it on.
#[derive(Debug)]
pub struct AutoCompactor {
    retention: Retention,
    /// (when, revision) samples, oldest first: periodic mode only.
    samples: VecDeque<(Duration, i64)>,
}

impl AutoCompactor {
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            samples: VecDeque::new(),
        }
    }

    /// Called about every second with the time since some fixed start, the
    /// current revision and the compaction revision; returns the revision
    /// to compact to, if it is time.
    pub fn tick(&mut self, now: Duration, revision: i64, compacted: i64) -> Option<i64> {
        let target = match self.retention {
            Retention::Revisions(keep) => {
                let step = (keep / 10).max(1);
                let target = revision - keep;
                (target >= compacted + step).then_some(target)?
            }
            Retention::Periodic(keep) => {
                let step = (keep / 10).max(Duration::from_secs(1));
                if self.samples.back().is_none_or(|(at, _)| now >= *at + step) {
                    self.samples.push_back((now, revision));
                }
                let cutoff = now.checked_sub(keep)?;
                let mut target = None;
                while let Some(&(at, rev)) = self.samples.front() {
                    if at > cutoff {
                        break;
                    }
                    target = Some(rev);
                    self.samples.pop_front();
                }
                target.filter(|&rev| rev > compacted)?
            }
        };
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(member: u64, db_size: u64, kv_hash: Option<KvHash>) -> Report {
        Report {
            member,
            name: format!("n{member}"),
            db_size,
            kv_hash,
        }
    }

    fn kv(hash: u32, revision: i64, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            revision,
            compact_revision,
        }
    }

    #[test]
    fn a_member_over_quota_or_with_another_checksum_is_alarmed_once() {
        let own = |rev: i64| (rev <= 10).then_some(kv(7, rev, 2));
        let reports = [
            report(1, 100, Some(kv(7, 10, 2))),
            report(2, 5_000, Some(kv(7, 10, 2))),
            report(3, 100, Some(kv(8, 10, 2))),
            // Another compaction revision, or a revision the leader has
            // not reached: not comparable.
            report(4, 100, Some(kv(9, 10, 1))),
            report(5, 100, Some(kv(9, 11, 2))),
            report(6, 100, None),
        ];
        let raised = alarms_to_raise(1_000, &reports, own, &[]);
        let what: Vec<(u64, Alarm)> = raised.iter().map(|(m, a, _)| (*m, *a)).collect();
        assert_eq!(what, [(2, Alarm::NoSpace), (3, Alarm::Corrupt)]);
        assert!(raised[1].2.contains("n3's history checksum at revision 10"));
        let active = [
            Active {
                member: 2,
                alarm: Alarm::NoSpace,
                reason: String::new(),
            },
            Active {
                member: 3,
                alarm: Alarm::Corrupt,
                reason: String::new(),
            },
        ];
        assert!(alarms_to_raise(1_000, &reports, own, &active).is_empty());
    }

    #[test]
    fn revision_retention_compacts_once_a_tenth_has_passed() {
        let mut compactor = AutoCompactor::new(Retention::Revisions(100));
        let s = Duration::from_secs;
        assert_eq!(compactor.tick(s(1), 50, 0), None);
        assert_eq!(compactor.tick(s(2), 109, 0), None);
        assert_eq!(compactor.tick(s(3), 110, 0), Some(10));
        assert_eq!(compactor.tick(s(4), 115, 10), None);
        assert_eq!(compactor.tick(s(5), 120, 10), Some(20));
    }

    #[test]
    fn periodic_retention_compacts_to_the_revision_of_one_retention_ago() {
        let mut compactor = AutoCompactor::new(Retention::Periodic(Duration::from_secs(10)));
        let mut compacted = 0;
        let mut done = Vec::new();
        for second in 0..=25 {
            let revision = second * 3;
            if let Some(target) =
                compactor.tick(Duration::from_secs(second as u64), revision, compacted)
            {
                done.push((second, target));
                compacted = target;
            }
        }
        // Each compaction reaches the revision of ten seconds before.
        assert!(!done.is_empty());
        for (second, target) in &done {
            assert!(*target <= (second - 10) * 3, "{done:?}");
            assert!(*target >= (second - 11) * 3, "{done:?}");
        }
        assert_eq!(done.last().unwrap().1, 45, "{done:?}");
    }
}
