//! The protocol's timing and fan-out.

/// Timing and fan-out; times in milliseconds.
#[derive(Debug, Clone)]
pub struct Config {
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub indirect_probes: usize,
    pub suspicion_mult: u64,
    pub suspicion_max_mult: u64,
    pub retransmit_mult: u32,
    pub gossip_interval_ms: u64,
    pub gossip_fanout: usize,
    /// Dead members still get gossip this long (so they learn and refute).
    pub gossip_dead_ms: u64,
    /// Updates piggybacked per message.
    pub max_piggyback: usize,
    pub push_pull_interval_ms: u64,
    pub max_awareness: u32,
    /// Dead and left members are forgotten this long after they went.
    pub prune_after_ms: u64,
    /// A member dead this long may come back under a new node key (a host
    /// whose data dir was wiped); before that, and unless it left, its
    /// name stays bound to its old key.
    pub rebind_after_dead_ms: u64,
}

/// Incarnations above this are refused as forged: a member adds one per
/// refutation, so no honest one gets near it, and no arithmetic on an
/// accepted one can overflow.
pub const MAX_INCARNATION: u64 = 1 << 40;
/// Members one agent tracks at most: past it, new names are refused, so no
/// peer can grow the table without bound.
pub const MAX_MEMBERS: usize = 65_536;

impl Default for Config {
    /// memberlist's LAN profile, which Consul uses.
    fn default() -> Self {
        Config {
            probe_interval_ms: 1000,
            probe_timeout_ms: 500,
            indirect_probes: 3,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            retransmit_mult: 4,
            gossip_interval_ms: 200,
            gossip_fanout: 3,
            gossip_dead_ms: 30_000,
            max_piggyback: 8,
            push_pull_interval_ms: 30_000,
            max_awareness: 8,
            // Consul reaps members after 72 h; a day is plenty for an
            // edge fleet's `member list` to show who went, and when.
            prune_after_ms: 24 * 3_600_000,
            rebind_after_dead_ms: 10 * 60_000,
        }
    }
}
