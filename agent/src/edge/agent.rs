//! Starting the edge tier inside an agent: what an edge keeps, who it is,
//! and the follower and relay tasks. `crate::agent` calls these; the
//! policy lives in `sources` and the checks in `crate::feed`.

use std::sync::Arc;
use std::time::Duration;

use super::follow::{FollowStatus, Follower};
use super::serve::FeedServer;
use super::sources::{self, Peer, Role as PeerRole};
use crate::config::{Config, Role};
use crate::consensus::Identity;
use crate::feed::Prefixes;
use crate::gossip::{Membership, State};
use crate::store::Store;
use crate::transport::{NodeKey, Transport};

/// Where the rollout records live: every edge keeps them, to render staged
/// values and announce its marks.
const ROLLOUT_RECORDS: &[u8] = b"_edgeconf/rollout/";

/// The prefixes an edge keeps: its `[[render]]` keys and prefixes, its
/// plugins' `read_keys`, `sync`, the rollout records and the trust roots.
pub fn subscription(config: &Config) -> Prefixes {
    use crate::config::RenderSource;
    let mut prefixes: Vec<Vec<u8>> = config
        .render
        .iter()
        .filter_map(|entry| match &entry.source {
            RenderSource::Key(key) | RenderSource::Prefix(key) => Some(key.clone()),
            RenderSource::Service(_) => None,
        })
        .chain(
            config
                .plugins
                .plugins
                .iter()
                .flat_map(|p| p.capabilities.read_keys.iter().cloned()),
        )
        .chain(config.sync.iter().cloned())
        .chain(std::iter::once(ROLLOUT_RECORDS.to_vec()))
        // The trust roots, which say whose signatures count.
        .chain(std::iter::once(crate::signing::root::ROOT_PREFIX.to_vec()))
        .collect();
    prefixes.sort();
    prefixes.dedup();
    Prefixes(prefixes)
}

/// An edge's raft-free identity: its member id is derived from its node
/// key (not its address), its cluster id is the one it stored, or on a
/// first start the one the voters it meets through gossip announce.
pub async fn identity(
    store: &Store,
    membership: &Membership,
    node_key: &NodeKey,
) -> anyhow::Result<Identity> {
    let member_id = crate::consensus::member_id(&node_key.public_key());
    if let Some(cluster_id) = store.meta("cluster_id")? {
        return Ok(Identity {
            cluster_id,
            member_id,
        });
    }
    let mut waited = 0u32;
    loop {
        let cluster = membership
            .members()
            .into_iter()
            .filter(|r| r.state == State::Alive && r.meta.role == Role::Voter.as_str())
            .find_map(|r| u64::from_str_radix(&r.meta.cluster, 16).ok());
        if let Some(cluster_id) = cluster {
            tracing::info!(
                cluster_id = format_args!("{cluster_id:x}"),
                "found the cluster through gossip"
            );
            return Ok(Identity {
                cluster_id,
                member_id,
            });
        }
        if waited.is_multiple_of(25) {
            tracing::info!(
                "edge agent: waiting to meet a voter through the gossip seeds (first start)"
            );
        }
        waited += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The live members of the fleet as feed sources.
fn peers(membership: &Membership) -> Vec<Peer> {
    membership
        .members()
        .into_iter()
        .filter(|r| r.state == State::Alive)
        .filter_map(|r| {
            let role = match r.meta.role.as_str() {
                "voter" => PeerRole::Voter,
                "edge" => PeerRole::Edge,
                _ => return None,
            };
            Some(Peer {
                name: r.id.to_string(),
                addr: r.addr.parse().ok()?,
                role,
                group: r.meta.feed_group.clone(),
                dials_out: r.meta.dials_out,
            })
        })
        .collect()
}

/// Answers feed pulls: a voter signs with its node key, an edge relays.
pub fn serve(
    config: &Config,
    store: &Arc<Store>,
    transport: &Transport,
    cluster_id: u64,
    node_key: &NodeKey,
) -> anyhow::Result<()> {
    let voter_key = match config.role {
        Role::Voter => Some(node_key.signing_key()?),
        Role::Edge => None,
    };
    transport.attach_feed(FeedServer::new(store.clone(), cluster_id, voter_key).handler());
    Ok(())
}

/// Starts an edge's follower; returns its status.
pub fn follow(
    config: &Config,
    store: &Arc<Store>,
    transport: &Transport,
    membership: &Arc<Membership>,
    cluster_id: u64,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Arc<FollowStatus> {
    let prefixes = subscription(config);
    let group = prefixes.group();
    membership.update_meta(|meta| meta.feed_group = group.clone());
    tracing::info!(prefixes = ?prefixes.0.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>(), %group, "following the voters' feed");
    let status = Arc::new(FollowStatus::new(
        config.max_staleness,
        config.stale_is_unhealthy,
    ));
    let own = membership.name();
    let members = membership.clone();
    // Seeds are asked last: an edge that meets nobody through gossip (its
    // seed is down, or the voters cannot dial it) still pulls from them.
    let seeds = config.gossip.seeds.clone();
    let follower = Follower {
        store: store.clone(),
        net: transport.feed().clone(),
        cluster_id,
        voters: config.voter_keys.clone(),
        prefixes,
        sources: Box::new(move || {
            let mut order = sources::candidates(&own, &group, &peers(&members));
            for seed in &seeds {
                if !order.contains(seed) {
                    order.push(*seed);
                }
            }
            order
        }),
        status: status.clone(),
    };
    tokio::spawn(follower.run(stopped));
    status
}
