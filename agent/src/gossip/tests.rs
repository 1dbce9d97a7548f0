//! Gossip unit tests: two members by hand, then small clusters in the
//! simulator (the same code the agent runs; simulated time and network).

use std::sync::Arc;

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

#[test]
fn a_member_joins_through_a_seed() {
    let config = Config::default();
    let mut a = Swim::new(
        config.clone(),
        Arc::from("a"),
        Arc::from("a:1"),
        Meta::default(),
        0,
        1,
    );
    let mut b = Swim::new(
        config,
        Arc::from("b"),
        Arc::from("b:1"),
        Meta::default(),
        0,
        2,
    );
    let to_b = a.join(&[Arc::from("b:1")]);
    assert_eq!(to_b.len(), 1);
    let replies = b.receive(to_b[0].message.clone(), 10);
    assert_eq!(b.state_of("a"), Some(State::Alive));
    for reply in replies {
        assert_eq!(&*reply.to, "a:1");
        a.receive(reply.message, 20);
    }
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // Messages survive their encoding.
    let message = a.tick(SECOND * 2).into_iter().next().unwrap().message;
    assert_eq!(Message::decode(&message.encode()).unwrap(), message);
}

#[test]
fn higher_incarnations_win_and_suspicion_is_refuted() {
    let config = Config::default();
    let mut a = Swim::new(
        config.clone(),
        Arc::from("a"),
        Arc::from("a:1"),
        Meta::default(),
        0,
        1,
    );
    let alive = |incarnation| Update::Alive {
        id: Arc::from("b"),
        incarnation,
        addr: Arc::from("b:1"),
        meta: Arc::new(Meta::default()),
    };
    a.apply(alive(5), 0);
    // An older suspicion is ignored, a current one applies.
    let suspect = |incarnation| Update::Suspect {
        id: Arc::from("b"),
        incarnation,
        from: Arc::from("c"),
    };
    a.apply(suspect(4), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    a.apply(suspect(5), 0);
    assert_eq!(a.state_of("b"), Some(State::Suspect));
    // The same incarnation alive does not clear it; a higher one does.
    a.apply(alive(5), 0);
    assert_eq!(a.state_of("b"), Some(State::Suspect));
    a.apply(alive(6), 0);
    assert_eq!(a.state_of("b"), Some(State::Alive));
    // Suspected itself, a member refutes with a higher incarnation.
    a.apply(
        Update::Suspect {
            id: Arc::from("a"),
            incarnation: 1,
            from: Arc::from("b"),
        },
        0,
    );
    assert_eq!(a.records()[0].incarnation, 2);
    assert!(
        a.awareness() > 0,
        "being suspected counts against local health"
    );
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
    let config = Config::default();
    let swim = |name: &str, seed| {
        Swim::new(
            config.clone(),
            Arc::from(name),
            Arc::from(format!("{name}:1")),
            Meta::default(),
            0,
            seed,
        )
    };
    let (mut a, mut b) = (swim("a", 1), swim("b", 2));
    let deliver = |to: &mut Swim, out: Vec<Outgoing>, now| -> Vec<Outgoing> {
        out.into_iter()
            .flat_map(|o| to.receive(o.message, now))
            .collect()
    };
    let replies = deliver(&mut b, a.join(&[Arc::from("b:1")]), 10);
    deliver(&mut a, replies, 20);
    // b leaves; a hears it. A change of metadata while leaving does not
    // bring it back.
    let left = b.leave(30);
    b.set_meta(Meta {
        role: "edge".into(),
        ..Meta::default()
    });
    deliver(&mut a, left, 40);
    assert_eq!(a.state_of("b"), Some(State::Left));
    // b starts again from incarnation 1 and joins through a: a's sync
    // reply says b left, so b refutes above it, and a takes it back.
    let mut b = swim("b", 3);
    let replies = deliver(&mut a, b.join(&[Arc::from("a:1")]), 50);
    deliver(&mut b, replies, 60);
    let gossip = b.tick(SECOND);
    let mut now = SECOND;
    let mut out = gossip;
    while a.state_of("b") != Some(State::Alive) && now < 10 * SECOND {
        let to_a: Vec<Outgoing> = out.into_iter().filter(|o| &*o.to == "a:1").collect();
        let back = deliver(&mut a, to_a, now);
        deliver(&mut b, back, now);
        now += 200;
        out = b.tick(now);
    }
    assert_eq!(a.state_of("b"), Some(State::Alive));
}

fn member(name: &str) -> Swim {
    Swim::new(
        Config::default(),
        Arc::from(name),
        Arc::from(format!("{name}:1").as_str()),
        Meta::default(),
        0,
        1,
    )
}

fn alive(name: &str, incarnation: u64) -> Update {
    Update::Alive {
        id: Arc::from(name),
        incarnation,
        addr: Arc::from(format!("{name}:1").as_str()),
        meta: Arc::new(Meta::default()),
    }
}

#[test]
fn forged_updates_with_impossible_incarnations_are_refused() {
    let mut a = member("a");
    a.apply(alive("b", 3), 0);
    // A forged "b left" and "a left" at u64::MAX: refused, nothing moves,
    // and a's own incarnation cannot be pushed to overflow.
    a.apply(
        Update::Left {
            id: Arc::from("b"),
            incarnation: u64::MAX,
        },
        0,
    );
    a.apply(
        Update::Left {
            id: Arc::from("a"),
            incarnation: u64::MAX,
        },
        0,
    );
    a.apply(
        Update::Dead {
            id: Arc::from("a"),
            incarnation: MAX_INCARNATION + 1,
            from: Arc::from("b"),
        },
        0,
    );
    assert_eq!(a.state_of("b"), Some(State::Alive));
    assert_eq!(a.records()[0].incarnation, 1);
    // The highest acceptable one is refuted without overflow.
    a.apply(
        Update::Suspect {
            id: Arc::from("a"),
            incarnation: MAX_INCARNATION,
            from: Arc::from("b"),
        },
        0,
    );
    assert_eq!(a.records()[0].incarnation, MAX_INCARNATION + 1);
}

#[test]
fn dead_and_left_members_are_forgotten_after_the_grace_period() {
    let mut a = member("a");
    a.apply(alive("b", 1), 0);
    a.apply(alive("c", 1), 0);
    a.apply(
        Update::Dead {
            id: Arc::from("b"),
            incarnation: 1,
            from: Arc::from("c"),
        },
        1_000,
    );
    a.apply(
        Update::Left {
            id: Arc::from("c"),
            incarnation: 1,
        },
        2_000,
    );
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
    for n in 0..MAX_MEMBERS + 100 {
        a.apply(alive(&format!("fake-{n}"), 1), 0);
    }
    assert_eq!(
        a.records().len(),
        MAX_MEMBERS + 1,
        "the table stops at its bound (plus itself)"
    );
}
