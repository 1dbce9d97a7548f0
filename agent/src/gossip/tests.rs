//! Gossip unit tests: two members by hand, then small clusters in the
//! simulator (the same code the agent runs; simulated time and network),
//! then forged statements a member holding a trusted key might send.

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::sim::{Network, Sim};
use super::swim::{MAX_INCARNATION, MAX_MEMBERS};
use super::*;

const SECOND: u64 = 1000;

fn lan() -> Network {
    Network {
        loss: 0.0,
        latency_ms: (1, 5),
    }
}

/// The node key of member `name` (the same on every run, as a data dir's).
fn key(name: &str) -> SigningKey {
    let mut bytes = [7u8; 32];
    for (slot, byte) in bytes.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    SigningKey::from_bytes(&bytes)
}

fn public(name: &str) -> [u8; 32] {
    key(name).verifying_key().to_bytes()
}

fn swim(name: &str, seed: u64) -> Swim {
    Swim::new(
        Config::default(),
        Arc::from(name),
        Arc::from(format!("{name}:1").as_str()),
        Meta::default(),
        key(name),
        0,
        seed,
    )
}

fn member(name: &str) -> Swim {
    swim(name, 1)
}

/// `name`'s own announcement, with `meta`, signed with `signer`'s key.
fn alive_by(name: &str, incarnation: u64, meta: Meta, signer: &str) -> Update {
    Update::Alive {
        id: Arc::from(name),
        incarnation,
        addr: Arc::from(format!("{name}:1").as_str()),
        meta: Arc::new(meta),
        key: public(signer),
        sig: Vec::new(),
    }
    .signed(&key(signer))
}

fn alive(name: &str, incarnation: u64) -> Update {
    alive_by(name, incarnation, Meta::default(), name)
}

fn suspect(id: &str, incarnation: u64, from: &str) -> Update {
    Update::Suspect {
        id: Arc::from(id),
        incarnation,
        from: Arc::from(from),
        sig: Vec::new(),
    }
    .signed(&key(from))
}

fn dead(id: &str, incarnation: u64, from: &str) -> Update {
    Update::Dead {
        id: Arc::from(id),
        incarnation,
        from: Arc::from(from),
        sig: Vec::new(),
    }
    .signed(&key(from))
}

/// "`id` left", signed with `signer`'s key.
fn left_by(id: &str, incarnation: u64, signer: &str) -> Update {
    Update::Left {
        id: Arc::from(id),
        incarnation,
        sig: Vec::new(),
    }
    .signed(&key(signer))
}

#[test]
fn a_member_joins_through_a_seed() {
    let (mut a, mut b) = (swim("a", 1), swim("b", 2));
    let to_b = a.join(&[Arc::from("b:1")]);
    assert_eq!(to_b.len(), 1);
    let replies = b.receive(to_b[0].message.clone(), Some(public("a")), 10);
    assert_eq!(b.state_of("a"), Some(State::Alive));
    for reply in replies {
        assert_eq!(&*reply.to, "a:1");
        a.receive(reply.message, Some(public("b")), 20);
    }
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // Messages survive their encoding.
    let message = a.tick(SECOND * 2).into_iter().next().unwrap().message;
    assert_eq!(Message::decode(&message.encode()).unwrap(), message);
    assert!(a.refused().is_empty() && b.refused().is_empty());
}

#[test]
fn higher_incarnations_win_and_suspicion_is_refuted() {
    let mut a = member("a");
    a.apply(alive("c", 1), 0);
    a.apply(alive("b", 5), 0);
    // An older suspicion is ignored, a current one applies.
    a.apply(suspect("b", 4, "c"), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    a.apply(suspect("b", 5, "c"), 0);
    assert_eq!(a.state_of("b"), Some(State::Suspect));
    // The same incarnation alive does not clear it; a higher one does.
    a.apply(alive("b", 5), 0);
    assert_eq!(a.state_of("b"), Some(State::Suspect));
    a.apply(alive("b", 6), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // Suspected itself, a member refutes with a higher incarnation.
    a.apply(suspect("a", 1, "b"), 0);
    assert_eq!(a.records()[0].incarnation, 2);
    assert!(
        a.awareness() > 0,
        "being suspected counts against local health"
    );
}

#[test]
fn only_members_that_reach_one_behind_nat_declare_it_dead() {
    let voter_meta = Meta {
        role: "voter".into(),
        ..Meta::default()
    };
    let voter_of = |name: &str, seed| {
        let addr = format!("{name}:1");
        Swim::new(
            Config::default(),
            Arc::from(name),
            Arc::from(addr.as_str()),
            voter_meta.clone(),
            key(name),
            0,
            seed,
        )
    };
    let (mut edge, mut voter) = (member("e"), voter_of("v", 2));
    edge.apply(alive("v", 1), 0);
    let behind_nat = Meta {
        dials_out: true,
        ..Meta::default()
    };
    for swim in [&mut edge, &mut voter] {
        swim.apply(alive("w", 1), 0);
        swim.apply(alive_by("n", 1, behind_nat.clone(), "n"), 0);
        // Another voter's probe of n failed: both hear the suspicion.
        swim.apply(suspect("n", 1, "w"), 0);
        assert_eq!(swim.state_of("n"), Some(State::Suspect));
    }
    // Far past every suspicion timeout and last chance: n never answers.
    for second in 1..=120 {
        edge.tick(second * SECOND);
        voter.tick(second * SECOND);
    }
    // The voter can reach n and declares it dead; the edge cannot, and
    // waits for the voters' verdict rather than give its own.
    assert_eq!(voter.state_of("n"), Some(State::Dead));
    assert_eq!(edge.state_of("n"), Some(State::Suspect));
    edge.apply(dead("n", 1, "v"), 121 * SECOND);
    assert_eq!(edge.state_of("n"), Some(State::Dead));
    // A refutation clears an edge's suspicion as it always did.
    let mut other = member("o");
    other.apply(alive("w", 1), 0);
    other.apply(alive_by("n", 1, behind_nat.clone(), "n"), 0);
    other.apply(suspect("n", 1, "w"), 0);
    other.tick(60 * SECOND);
    other.apply(alive_by("n", 2, behind_nat, "n"), 61 * SECOND);
    assert_eq!(other.state_of("n"), Some(State::Alive));
}

#[test]
fn a_killed_member_is_declared_dead_by_everyone_and_nobody_else_is() {
    let mut sim = Sim::new(40, Config::default(), lan(), 7);
    sim.run_until(10 * SECOND, |_| false);
    sim.kill(3);
    let killed_at = sim.now_ms;
    let everyone = sim.up().count();
    assert!(
        sim.run_until(killed_at + 60 * SECOND, |s| s.seen_as(3, State::Dead)
            == everyone)
    );
    println!("dead everywhere after {} ms", sim.now_ms - killed_at);
    sim.run_until(sim.now_ms + 20 * SECOND, |_| false);
    assert_eq!(sim.false_changes(State::Dead), 0);
    assert_eq!(sim.false_changes(State::Suspect), 0);
}

#[test]
fn a_member_that_leaves_is_left_not_dead() {
    let mut sim = Sim::new(30, Config::default(), lan(), 11);
    sim.run_until(5 * SECOND, |_| false);
    sim.leave(4);
    let everyone = sim.up().count();
    assert!(
        sim.run_until(sim.now_ms + 10 * SECOND, |s| s.seen_as(4, State::Left)
            == everyone)
    );
    assert_eq!(sim.seen_as(4, State::Dead), 0);
}

#[test]
fn metadata_changes_reach_every_member() {
    let mut sim = Sim::new(50, Config::default(), lan(), 5);
    sim.run_until(2 * SECOND, |_| false);
    let mut meta = Meta::default();
    meta.labels.insert("tier".into(), "canary".into());
    sim.members[9].set_meta(meta);
    let incarnation = sim.members[9].records()[0].incarnation;
    let informed = |s: &Sim| {
        s.up()
            .filter(|i| *i != 9)
            .filter(|i| {
                s.members[*i].record_of("n9").is_some_and(|r| {
                    r.incarnation == incarnation
                        && r.meta.labels.get("tier").is_some_and(|t| t == "canary")
                })
            })
            .count()
    };
    // Gossip reaches nearly everyone within seconds; an epidemic with a
    // bounded number of retransmissions can miss a member, which the
    // periodic full sync (every 30 s plus jitter) then repairs.
    sim.run_until(sim.now_ms + 5 * SECOND, |_| false);
    assert!(
        informed(&sim) >= 45,
        "only {} of 49 informed after 5 s",
        informed(&sim)
    );
    let spread = sim.run_until(sim.now_ms + 120 * SECOND, |s| informed(s) == 49);
    assert!(spread, "only {} of 49 informed", informed(&sim));
}

#[test]
fn lossy_networks_cause_few_false_deaths_and_all_are_undone() {
    let network = Network {
        loss: 0.10,
        latency_ms: (1, 20),
    };
    let mut sim = Sim::new(50, Config::default(), network, 3);
    sim.run_until(120 * SECOND, |_| false);
    let suspicions = sim.false_changes(State::Suspect);
    let deaths = sim.false_changes(State::Dead);
    println!("10% loss, 50 members, 120 s: {suspicions} suspicions refuted, {deaths} false deaths");
    // Each observer times suspicions out itself, so one that misses a
    // refutation may declare a live member dead for a while (memberlist
    // behaves alike); that must stay rare...
    assert!(deaths <= 10, "{deaths} false deaths");
    // ...and be undone: once the network heals, everyone sees everyone.
    sim.network.loss = 0.0;
    let healed = sim.run_until(sim.now_ms + 60 * SECOND, |s| {
        (0..50).all(|subject| s.seen_as(subject, State::Alive) == 49)
    });
    assert!(healed, "some members never came back alive");
}

#[test]
fn a_member_that_left_and_restarts_is_alive_again() {
    let (mut a, mut b) = (swim("a", 1), swim("b", 2));
    let deliver = |to: &mut Swim, out: Vec<Outgoing>, from: &str, now| -> Vec<Outgoing> {
        out.into_iter()
            .flat_map(|o| to.receive(o.message, Some(public(from)), now))
            .collect()
    };
    let replies = deliver(&mut b, a.join(&[Arc::from("b:1")]), "a", 10);
    deliver(&mut a, replies, "b", 20);
    // b leaves; a hears it. A change of metadata while leaving does not
    // bring it back.
    let left = b.leave(30);
    b.set_meta(Meta {
        role: "edge".into(),
        ..Meta::default()
    });
    deliver(&mut a, left, "b", 40);
    assert_eq!(a.state_of("b"), Some(State::Left));
    // b starts again (same node key) from incarnation 1 and joins through
    // a: a's sync reply holds b's own signed "left", so b refutes above
    // it, and a takes it back.
    let mut b = swim("b", 3);
    let replies = deliver(&mut a, b.join(&[Arc::from("a:1")]), "b", 50);
    deliver(&mut b, replies, "a", 60);
    let gossip = b.tick(SECOND);
    let mut now = SECOND;
    let mut out = gossip;
    while a.state_of("b") != Some(State::Alive) && now < 10 * SECOND {
        let to_a: Vec<Outgoing> = out.into_iter().filter(|o| &*o.to == "a:1").collect();
        let back = deliver(&mut a, to_a, "b", now);
        deliver(&mut b, back, "a", now);
        now += 200;
        out = b.tick(now);
    }
    assert_eq!(a.state_of("b"), Some(State::Alive));
}

#[test]
fn forged_updates_with_impossible_incarnations_are_refused() {
    let mut a = member("a");
    a.apply(alive("b", 3), 0);
    // "b left" and "a left" at u64::MAX, even signed by their subjects:
    // refused, nothing moves, and a's incarnation cannot overflow.
    a.apply(left_by("b", u64::MAX, "b"), 0);
    a.apply(left_by("a", u64::MAX, "a"), 0);
    a.apply(dead("a", MAX_INCARNATION + 1, "b"), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    assert_eq!(a.records()[0].incarnation, 1);
    assert_eq!(a.refused()["impossible_incarnation"], 3);
    // A suspicion at the highest acceptable one is refuted one past a's
    // own incarnation: only a's own signed words move it further.
    a.apply(suspect("a", MAX_INCARNATION, "b"), 0);
    assert_eq!(a.records()[0].incarnation, 2);
}

#[test]
fn no_member_can_speak_for_another() {
    // a knows b and c; c holds a trusted key and lies about b.
    let mut a = member("a");
    a.set_trusted([public("a"), public("b"), public("c")]);
    a.apply(alive("b", 1), 0);
    a.apply(alive("c", 1), 0);
    let services = Meta {
        services: vec![ServiceState {
            id: "web".into(),
            name: "web".into(),
            address: "10.0.0.66".into(),
            port: 80,
            tags: Vec::new(),
            health: Health::Passing,
            output: String::new(),
        }],
        ..Meta::default()
    };
    let forgeries = [
        // b's announcement with services b never had, under c's key...
        (alive_by("b", 2, services.clone(), "c"), "key_changed"),
        // ...or claiming b's key, signed by c.
        (
            match alive_by("b", 2, services, "c") {
                Update::Alive {
                    id,
                    incarnation,
                    addr,
                    meta,
                    sig,
                    ..
                } => Update::Alive {
                    id,
                    incarnation,
                    addr,
                    meta,
                    key: public("b"),
                    sig,
                },
                other => other,
            },
            "bad_signature",
        ),
        // "b left", and "b is dead, says a", signed by c.
        (left_by("b", 2, "c"), "bad_signature"),
        (
            match dead("b", 1, "c") {
                Update::Dead {
                    id,
                    incarnation,
                    sig,
                    ..
                } => Update::Dead {
                    id,
                    incarnation,
                    from: Arc::from("a"),
                    sig,
                },
                other => other,
            },
            "bad_signature",
        ),
        // A suspicion in the name of a member nobody knows.
        (suspect("b", 1, "stranger"), "unknown_signer"),
        // A new member under a key nobody trusts.
        (alive("mallory", 1), "untrusted_key"),
        // A made-up member under c's key, which c (alive) is bound to.
        (
            alive_by("sybil", 1, Meta::default(), "c"),
            "key_has_another_name",
        ),
    ];
    for (forgery, reason) in forgeries {
        let before = a.refused().get(reason).copied().unwrap_or(0);
        a.apply(forgery.clone(), 0);
        assert_eq!(
            a.refused().get(reason).copied().unwrap_or(0),
            before + 1,
            "{forgery:?} should be refused as {reason}"
        );
    }
    let b = a.records().into_iter().find(|r| &*r.id == "b").unwrap();
    assert_eq!(b.state, State::Alive);
    assert_eq!(b.incarnation, 1);
    assert!(b.meta.services.is_empty());
    assert_eq!(a.state_of("mallory"), None);
    // A message c sends in b's name over its own connection is dropped.
    // (b's real "left", which c kept from an earlier run of b, say.)
    let message = Message {
        from: Arc::from("b"),
        from_addr: Arc::from("b:1"),
        body: super::message::Body::Gossip,
        updates: vec![left_by("b", 2, "b")],
    };
    a.receive(message, Some(public("c")), 0);
    assert_eq!(a.refused()["impersonation"], 1);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // What c says in its own name stands (and b can refute it).
    a.apply(suspect("b", 1, "c"), 0);
    assert_eq!(a.state_of("b"), Some(State::Suspect));
    a.apply(alive("b", 2), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
}

#[test]
fn a_name_is_bound_anew_only_after_its_member_left() {
    let mut a = member("a");
    a.apply(alive("b", 1), 0);
    // The same name under another key (a new data dir, or an impostor).
    let other = alive_by("b", 2, Meta::default(), "b2");
    a.apply(other.clone(), 0);
    assert_eq!(a.refused()["key_changed"], 1);
    // Once b says itself that it left, the name is free.
    a.apply(left_by("b", 2, "b"), 0);
    assert_eq!(a.state_of("b"), Some(State::Left));
    a.apply(alive_by("b", 3, Meta::default(), "b2"), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // ...and bound to the new key: the old one no longer speaks for it.
    a.apply(left_by("b", 4, "b"), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    assert_eq!(a.refused()["bad_signature"], 1);
    // A member dead long enough may come back under a new key (a wiped
    // host), not before.
    a.apply(alive("c", 1), 0);
    a.apply(dead("b", 3, "c"), 1_000);
    let wait = Config::default().rebind_after_dead_ms;
    a.apply(alive_by("b", 4, Meta::default(), "b3"), 1_000 + wait - 1);
    assert_eq!(a.state_of("b"), Some(State::Dead));
    assert_eq!(a.refused()["key_changed"], 2);
    a.apply(alive_by("b", 4, Meta::default(), "b3"), 1_000 + wait);
    assert_eq!(a.state_of("b"), Some(State::Alive));
}

#[test]
fn dead_and_left_members_are_forgotten_after_the_grace_period() {
    let mut a = member("a");
    a.apply(alive("b", 1), 0);
    a.apply(alive("c", 1), 0);
    a.apply(dead("b", 1, "c"), 1_000);
    a.apply(left_by("c", 1, "c"), 2_000);
    let grace = Config::default().prune_after_ms;
    a.tick(1_000 + grace - 1);
    assert_eq!(a.state_of("b"), Some(State::Dead), "kept within the grace");
    a.tick(2_000 + grace);
    assert_eq!(a.state_of("b"), None);
    assert_eq!(a.state_of("c"), None);
    assert_eq!(a.records().len(), 1, "only itself");
}

#[test]
fn no_peer_can_grow_the_member_table_without_bound() {
    let mut a = member("a");
    // One key, many names (the key is trusted; its owner is not): one.
    for n in 0..100 {
        a.apply(alive_by(&format!("fake-{n}"), 1, Meta::default(), "c"), 0);
    }
    assert_eq!(a.records().len(), 2, "itself and the first name");
    assert_eq!(a.refused()["key_has_another_name"], 99);
    // Many keys, one name each: the table stops at its bound.
    for n in 0..MAX_MEMBERS + 100 {
        let name = format!("k-{n}");
        a.apply(alive_by(&name, 1, Meta::default(), &name), 0);
    }
    assert_eq!(
        a.records().len(),
        MAX_MEMBERS + 1,
        "the table stops at its bound (plus itself)"
    );
}
