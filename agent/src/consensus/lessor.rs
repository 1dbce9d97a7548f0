//! Lease deadlines and expiry.
//!
//! The store keeps each lease's TTL and keys; deadlines live only in memory,
//! on every member, moved by applied grants, keep-alives and revokes. Only
//! the leader revokes expired leases. A member that becomes leader gives
//! every lease a full TTL again (as etcd does), so neither a restart nor a
//! leader change expires a lease early.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Applied, Command, CommandResponse, Store, StoreError};

use super::{Node, ProposeError};

/// etcd's largest TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// How often expired leases are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

pub struct Lessor {
    // A std mutex: it is held for map updates only, never across an await.
    deadlines: Mutex<HashMap<i64, Instant>>,
}

/// A lease as `TimeToLive` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    pub id: i64,
    pub granted_ttl: i64,
    /// Seconds left, rounded up.
    pub remaining_ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

impl Lessor {
    pub(super) fn recover(store: &Store) -> Result<Self, StoreError> {
        let lessor = Self {
            deadlines: Mutex::new(HashMap::new()),
        };
        lessor.promote(store);
        Ok(lessor)
    }

    fn deadlines(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.deadlines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives every stored lease a full TTL from now.
    pub(crate) fn promote(&self, store: &Store) {
        let leases = match store.leases() {
            Ok(leases) => leases,
            Err(err) => {
                tracing::error!(error = %err, "reading leases");
                return;
            }
        };
        let now = Instant::now();
        *self.deadlines() = leases
            .into_iter()
            .map(|(id, ttl)| (id, now + ttl_duration(ttl)))
            .collect();
    }

    pub(crate) fn renew(&self, id: i64, ttl: i64) {
        self.deadlines()
            .insert(id, Instant::now() + ttl_duration(ttl));
    }

    pub(crate) fn forget(&self, id: i64) {
        self.deadlines().remove(&id);
    }

    /// Follows an applied command on this member.
    pub(crate) fn on_applied(&self, command: &Command, response: &CommandResponse) {
        match (command.unwrapped(), response) {
            (Command::LeaseGrant { id, ttl }, _) => self.renew(*id, *ttl),
            (
                Command::LeaseKeepAlive { id },
                CommandResponse::LeaseKeepAlive { ttl: Some(ttl) },
            ) => self.renew(*id, *ttl),
            (Command::LeaseRevoke { id }, _) => self.forget(*id),
            _ => {}
        }
    }

    fn expired(&self) -> Vec<i64> {
        let now = Instant::now();
        self.deadlines()
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, MAX_LEASE_TTL) as u64)
}

impl Node {
    /// Grants a lease; `id` 0 lets the agent choose one.
    pub async fn lease_grant(&self, id: i64, ttl: i64) -> Result<Applied, ProposeError> {
        if !(1..=MAX_LEASE_TTL).contains(&ttl) {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL {ttl} is out of range: expected 1 to {MAX_LEASE_TTL} seconds"
            ))
            .into());
        }
        let id = if id != 0 { id } else { self.unused_lease_id()? };
        self.propose(Command::LeaseGrant { id, ttl }).await
    }

    fn unused_lease_id(&self) -> Result<i64, StoreError> {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && self.store().lease(id)?.is_none() {
                return Ok(id);
            }
        }
    }

    /// Revokes a lease for a client whose `credential` (checked again by
    /// the leader when this member is a follower) may write its keys.
    pub async fn lease_revoke(
        &self,
        id: i64,
        credential: crate::auth::Credential,
    ) -> Result<Applied, ProposeError> {
        self.propose_as(Command::LeaseRevoke { id }, credential)
            .await
    }

    /// Renews a lease on every member; returns its TTL, or `None` if it is
    /// gone.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<Option<i64>, ProposeError> {
        let applied = self.propose(Command::LeaseKeepAlive { id }).await?;
        match applied.response {
            CommandResponse::LeaseKeepAlive { ttl } => Ok(ttl),
            other => Err(ProposeError::Failed(format!(
                "unexpected response to a keep-alive: {other:?}"
            ))),
        }
    }

    pub fn lease_status(&self, id: i64) -> Result<Option<LeaseStatus>, StoreError> {
        let Some(lease) = self.store().lease(id)? else {
            return Ok(None);
        };
        let remaining = self
            .lessor
            .deadlines()
            .get(&id)
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        Ok(Some(LeaseStatus {
            id,
            granted_ttl: lease.ttl,
            remaining_ttl: remaining.as_millis().div_ceil(1000) as i64,
            keys: lease.keys,
        }))
    }

    /// On the leader, revokes leases whose deadline passed, until shutdown.
    pub async fn expire_leases(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if !self.is_leader() {
                continue;
            }
            for id in self.lessor.expired() {
                match self.propose(Command::LeaseRevoke { id }).await {
                    Ok(_) => tracing::info!(
                        lease = format_args!("{id:x}"),
                        "lease expired and was revoked"
                    ),
                    Err(ProposeError::Rejected(StoreError::LeaseNotFound(_))) => {
                        self.lessor.forget(id)
                    }
                    Err(ProposeError::Stopped) => return,
                    Err(err) => {
                        tracing::warn!(lease = format_args!("{id:x}"), error = %err, "revoking an expired lease failed; retrying");
                        self.lessor.renew(id, 1);
                    }
                }
            }
        }
    }
}
