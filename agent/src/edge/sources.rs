//! Which peers a follower pulls from, in order of preference: a pure
//! function of the gossip membership, tested like `rollout::gate`.
//!
//! Followers with the same subscription (the same "group") form a tree of
//! fan-out [`FANOUT`], ordered by name: the first `FANOUT` pull from the
//! voters, every other one from its parent in the tree. A voter therefore
//! sends each change to at most `FANOUT` followers per group however large
//! the fleet, and a change reaches N followers in about `log_FANOUT(N)`
//! hops. A follower whose parent is unreachable, lies or lags falls back to
//! its grandparent and so on, then to the voters, then to any other member
//! of its group: the tree is a preference, never a single point of failure.
//!
//! Edges that cannot be dialed (behind NAT) follow like the others but
//! relay to nobody: they are left out of the tree.

use std::net::SocketAddr;

/// Children per follower in a group's tree (and followers per group that
/// pull from the voters).
pub const FANOUT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Voter,
    Edge,
}

/// A live member as gossip describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub role: Role,
    /// The subscription group it announces (edges), empty for voters.
    pub group: String,
    /// It accepts no connections (`[gossip] dial_out_only`).
    pub dials_out: bool,
}

/// The positions of the ancestors of `position` in a group's tree, nearest
/// first (none for the `FANOUT` roots, which pull from the voters).
pub fn ancestors(position: usize) -> Vec<usize> {
    let mut order = Vec::new();
    let mut at = position;
    while at >= FANOUT {
        at = at / FANOUT - 1;
        order.push(at);
    }
    order
}

/// The peers `own` should pull from, best first.
pub fn candidates(own: &str, group: &str, peers: &[Peer]) -> Vec<SocketAddr> {
    let group_members: std::collections::BTreeMap<&str, SocketAddr> = peers
        .iter()
        .filter(|p| p.role == Role::Edge && p.group == group && p.name != own)
        .filter(|p| !p.dials_out)
        .map(|p| (p.name.as_str(), p.addr))
        .collect();
    let position = group_members.range(..own).count();
    let members: Vec<SocketAddr> = group_members.values().copied().collect();
    // In the tree, `own` sits at `position` among the members and itself;
    // below `position` the member list is the same with or without it.
    let mut order: Vec<SocketAddr> = ancestors(position)
        .into_iter()
        .map(|at| members[at])
        .collect();
    // Voters, starting at one chosen by the follower's place so that the
    // roots of a group spread over them.
    let voters: Vec<SocketAddr> = peers
        .iter()
        .filter(|p| p.role == Role::Voter)
        .map(|p| p.addr)
        .collect();
    for i in 0..voters.len() {
        order.push(voters[(position + i) % voters.len()]);
    }
    let taken: std::collections::HashSet<SocketAddr> = order.iter().copied().collect();
    order.extend(members.into_iter().filter(|addr| !taken.contains(addr)));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(i: usize, group: &str) -> Peer {
        Peer {
            name: format!("e{i:04}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
            role: Role::Edge,
            group: group.into(),
            dials_out: false,
        }
    }

    fn voter(i: usize) -> Peer {
        Peer {
            name: format!("v{i}"),
            addr: SocketAddr::from(([127, 0, 0, 2], 20_000 + i as u16)),
            role: Role::Voter,
            group: String::new(),
            dials_out: false,
        }
    }

    fn fleet(edges: usize) -> Vec<Peer> {
        let mut peers: Vec<Peer> = (0..3).map(voter).collect();
        peers.extend((0..edges).map(|i| edge(i, "g")));
        peers
    }

    #[test]
    fn voters_serve_at_most_fanout_followers_per_group_however_large_the_fleet() {
        for size in [1, 8, 9, 100, 5_000] {
            let roots = (0..size).filter(|&p| ancestors(p).is_empty()).count();
            assert_eq!(roots, size.min(FANOUT), "fleet of {size}");
        }
        // And the candidates list agrees: a root asks a voter first, a
        // follower further down its parent.
        let peers = fleet(100);
        let is_voter = |a: &SocketAddr| peers.iter().any(|p| p.role == Role::Voter && p.addr == *a);
        assert!(is_voter(&candidates("e0007", "g", &peers)[0]));
        assert_eq!(candidates("e0008", "g", &peers)[0], edge(0, "g").addr);
        assert_eq!(
            candidates("e0099", "g", &peers)[0],
            edge(99 / 8 - 1, "g").addr
        );
    }

    #[test]
    fn the_tree_is_shallow_and_every_follower_falls_back_to_voters_and_peers() {
        // 8 roots, then 64, 512, 4096: four levels of parents at most.
        let deepest = (0..5_000).map(|p| ancestors(p).len()).max().unwrap();
        assert_eq!(deepest, 4);
        // Every parent is a member nearer the root.
        assert!((0..5_000).all(|p| ancestors(p).iter().all(|&a| a < p)));
        let peers = fleet(5_000);
        let order = candidates("e4999", "g", &peers);
        assert_eq!(order.len(), 3 + 4999, "voters and every other member");
        assert!(!order.contains(&edge(4999, "g").addr), "never itself");
        let unique: std::collections::HashSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
    }

    #[test]
    fn other_groups_are_never_asked() {
        let mut peers = fleet(20);
        peers.extend((100..200).map(|i| edge(i, "other")));
        let order = candidates("e0015", "g", &peers);
        assert!(order
            .iter()
            .all(|a| peers.iter().any(|p| p.addr == *a && p.group != "other")));
        // A follower alone in its group pulls from the voters only.
        let alone = candidates("solo", "lonely", &peers);
        assert_eq!(alone.len(), 3);
    }

    #[test]
    fn edges_behind_nat_follow_but_are_never_asked() {
        let mut peers = fleet(30);
        for peer in &mut peers[3..13] {
            peer.dials_out = true;
        }
        let behind: Vec<SocketAddr> = peers[3..13].iter().map(|p| p.addr).collect();
        for own in ["e0000", "e0005", "e0020", "e0029"] {
            let order = candidates(own, "g", &peers);
            assert!(
                order.iter().all(|a| !behind.contains(a)),
                "{own}: {order:?}"
            );
            assert_eq!(order.len(), 3 + 20 - usize::from(own >= "e0010"));
        }
        // The first dialable edges are the roots again: they ask a voter.
        let is_voter = |a: &SocketAddr| peers.iter().any(|p| p.role == Role::Voter && p.addr == *a);
        assert!(is_voter(&candidates("e0010", "g", &peers)[0]));
    }
}
