//! etcd's alarms (NOSPACE, CORRUPT), kept as keys under
//! `_edgeconf/alarm/<member id>/<ALARM>`: replicated by raft, carried in
//! snapshots, the same on every member, watched like any key.
//!
//! Who may write one: the leader, from its upkeep task (a member over its
//! quota, a member whose history checksum differs from the leader's) and
//! from its Maintenance.Alarm API (an admin's activate or disarm; followers
//! send those requests to the leader). Writes under `_edgeconf/` that come
//! any other way (a client's put, a follower's forwarded raft entry) are
//! refused as for every edgeconf record. What members check: a NOSPACE
//! alarm anywhere refuses every write that takes space, on every member's
//! API, until an admin disarms it (after compacting and defragmenting).

use crate::store::{Command, KeyRange, PutRequest, Store, StoreError, TxnOp};

/// Where alarms live.
pub const PREFIX: &str = "_edgeconf/alarm/";

/// etcd's alarm types (the numbers are etcd's `AlarmType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alarm {
    NoSpace,
    Corrupt,
}

impl Alarm {
    pub const ALL: [Alarm; 2] = [Alarm::NoSpace, Alarm::Corrupt];

    pub fn name(self) -> &'static str {
        match self {
            Alarm::NoSpace => "NOSPACE",
            Alarm::Corrupt => "CORRUPT",
        }
    }

    pub fn etcd_type(self) -> i32 {
        match self {
            Alarm::NoSpace => 1,
            Alarm::Corrupt => 2,
        }
    }

    pub fn from_etcd_type(value: i32) -> Option<Alarm> {
        Alarm::ALL.into_iter().find(|a| a.etcd_type() == value)
    }
}

/// The key of `alarm` raised for `member`.
pub fn key(member: u64, alarm: Alarm) -> Vec<u8> {
    format!("{PREFIX}{member:016x}/{}", alarm.name()).into_bytes()
}

/// The member and alarm a key under [`PREFIX`] stands for.
pub fn parse(key: &[u8]) -> Option<(u64, Alarm)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(PREFIX)?;
    let (member, name) = rest.split_once('/')?;
    let member = u64::from_str_radix(member, 16).ok()?;
    let alarm = Alarm::ALL.into_iter().find(|a| a.name() == name)?;
    Some((member, alarm))
}

/// One active alarm: the member, the alarm, and why it was raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Active {
    pub member: u64,
    pub alarm: Alarm,
    pub reason: String,
}

/// The alarms active in `store`, by member and alarm.
pub fn active(store: &Store) -> Result<Vec<Active>, StoreError> {
    // Read on every client write (`check_space`): from memory.
    let response = store.internal_range(PREFIX)?;
    Ok(response
        .kvs
        .iter()
        .filter_map(|kv| {
            let (member, alarm) = parse(&kv.key)?;
            Some(Active {
                member,
                alarm,
                reason: String::from_utf8_lossy(&kv.value).into_owned(),
            })
        })
        .collect())
}

/// The command that raises `alarm` for `member`, saying why.
pub fn raise(member: u64, alarm: Alarm, reason: &str) -> Command {
    Command::Put(PutRequest::new(key(member, alarm), reason))
}

/// The command that disarms `alarm` of `member`.
pub fn disarm(member: u64, alarm: Alarm) -> Command {
    Command::DeleteRange(crate::store::DeleteRangeRequest {
        range: KeyRange::single(key(member, alarm)),
        prev_kv: false,
    })
}

/// Whether `command` may grow the store: refused while NOSPACE is active,
/// as etcd's capped applier refuses puts, txns with puts and lease grants.
pub fn takes_space(command: &Command) -> bool {
    match command {
        Command::Put(_) | Command::SignedPut { .. } | Command::LeaseGrant { .. } => true,
        Command::Txn(txn) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op, TxnOp::Put(_))),
        Command::Authorized { command, .. } => takes_space(command),
        Command::DeleteRange(_)
        | Command::SignedDelete { .. }
        | Command::Compact { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseKeepAlive { .. }
        | Command::Auth(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_member_and_the_alarm_and_parse_back() {
        let key = key(0xabc, Alarm::NoSpace);
        assert_eq!(key, b"_edgeconf/alarm/0000000000000abc/NOSPACE");
        assert_eq!(parse(&key), Some((0xabc, Alarm::NoSpace)));
        assert_eq!(parse(b"_edgeconf/alarm/zz/NOSPACE"), None);
        assert_eq!(parse(b"_edgeconf/alarm/0000000000000abc/FIRE"), None);
        assert_eq!(Alarm::from_etcd_type(2), Some(Alarm::Corrupt));
        assert_eq!(Alarm::from_etcd_type(0), None);
    }

    #[test]
    fn only_writes_that_grow_the_store_are_capped() {
        let put = Command::Put(PutRequest::new("/k", "v"));
        assert!(takes_space(&put));
        assert!(takes_space(&Command::Authorized {
            auth_revision: 1,
            command: Box::new(put),
        }));
        assert!(!takes_space(&disarm(1, Alarm::NoSpace)));
        assert!(!takes_space(&Command::Compact { revision: 5 }));
    }
}
