//! The gossip protocol at fleet scale, in simulation: the agent's own SWIM
//! code (`edgeconf::gossip`) over a simulated network with latency and
//! loss, in simulated time. For 1,000 and 5,000 members it prints the time
//! to detect a killed member (first suspicion, first and last "dead"), the
//! time for a metadata update to reach every member, bytes per member per
//! second, and false positives under 10% packet loss.
//!
//! Run: `cargo bench --bench gossip` (asserts nothing; takes a few minutes
//! and a few GiB of memory at 5,000 members: each member knows all others).

use std::time::Instant;

use edgeconf::gossip::sim::{Network, Sim};
use edgeconf::gossip::{Config, Meta, State};

const SECOND: u64 = 1000;

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn scenario(n: usize) {
    let started = Instant::now();
    let lan = Network {
        loss: 0.0,
        latency_ms: (1, 10),
    };
    let mut sim = Sim::new(n, Config::default(), lan, 42);
    sim.run_until(10 * SECOND, |_| false);

    // Steady state traffic.
    sim.reset_traffic();
    let from = sim.now_ms;
    sim.run_until(from + 30 * SECOND, |_| false);
    let steady = sim.bytes as f64 / n as f64 / 30.0;
    let steady_messages = sim.messages as f64 / n as f64 / 30.0;

    // Failure detection.
    let victim = 1;
    sim.changes.clear();
    sim.reset_traffic();
    sim.kill(victim);
    let killed = sim.now_ms;
    let everyone = sim.up().count();
    let detected = sim.run_until(killed + 600 * SECOND, |s| {
        s.seen_as(victim, State::Dead) == everyone
    });
    let victim_id = sim.members[victim].id().clone();
    let first = |state: State| {
        sim.changes
            .iter()
            .filter(|(_, c)| c.id == victim_id && c.to == state)
            .map(|(_, c)| c.at_ms - killed)
            .min()
            .unwrap_or(0)
    };
    let (first_suspect, first_dead) = (first(State::Suspect), first(State::Dead));
    let all_dead = sim.now_ms - killed;
    let detection_bytes = sim.bytes as f64 / n as f64 / seconds(all_dead.max(1));

    // An update (new labels) spreading.
    let mut meta = Meta::default();
    meta.labels.insert("tier".into(), "canary".into());
    let author = 2;
    sim.members[author].set_meta(meta);
    let incarnation = sim.members[author].records()[0].incarnation;
    let author_id = sim.members[author].id().clone();
    let published = sim.now_ms;
    let spread = sim.run_until(published + 600 * SECOND, |s| {
        s.up().filter(|i| *i != author).all(|i| {
            s.members[i]
                .record_of(&author_id)
                .is_some_and(|r| r.incarnation == incarnation)
        })
    });
    let spread_ms = sim.now_ms - published;
    println!("== {n} members, no loss, latency 1-10 ms ==");
    println!("steady state:                 {steady:>8.0} bytes/member/s ({steady_messages:.1} messages)");
    println!(
        "killed member: first suspect {:>6.1} s, first dead {:>6.1} s, dead at all {} members {:>6.1} s{}",
        seconds(first_suspect),
        seconds(first_dead),
        everyone,
        seconds(all_dead),
        if detected { "" } else { " (NOT everywhere)" }
    );
    println!("  while detecting:            {detection_bytes:>8.0} bytes/member/s");
    println!(
        "update reached every member:  {:>6.1} s{}",
        seconds(spread_ms),
        if spread { "" } else { " (NOT everywhere)" }
    );
    drop(sim);

    // False positives under loss.
    let lossy = Network {
        loss: 0.10,
        latency_ms: (1, 20),
    };
    let mut sim = Sim::new(n, Config::default(), lossy, 43);
    sim.run_until(10 * SECOND, |_| false);
    sim.changes.clear();
    sim.reset_traffic();
    let window = 120 * SECOND;
    sim.run_until(sim.now_ms + window, |_| false);
    let suspicions = sim.false_changes(State::Suspect);
    let deaths = sim.false_changes(State::Dead);
    let mut falsely_dead: Vec<&str> = sim
        .changes
        .iter()
        .filter(|(_, c)| c.to == State::Dead)
        .map(|(_, c)| &*c.id)
        .collect();
    falsely_dead.sort_unstable();
    falsely_dead.dedup();
    println!(
        "== {n} members, 10% loss, latency 1-20 ms, {} s ==",
        window / SECOND
    );
    println!(
        "false suspicions (observer x member, all refuted unless below): {suspicions} ({:.2} per member per minute)",
        suspicions as f64 / n as f64 / (window as f64 / 60_000.0)
    );
    println!(
        "false deaths: {deaths} declarations about {} live members ({:.3}% of members)",
        falsely_dead.len(),
        100.0 * falsely_dead.len() as f64 / n as f64
    );
    println!(
        "traffic:                      {:>8.0} bytes/member/s",
        sim.bytes as f64 / n as f64 / seconds(window)
    );
    println!(
        "(simulated in {:.1} s of real time)\n",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    // EDGECONF_SIM_MEMBERS=300,1000 runs other sizes.
    let sizes: Vec<usize> = std::env::var("EDGECONF_SIM_MEMBERS")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![1000, 5000]);
    for n in sizes {
        scenario(n);
    }
}
