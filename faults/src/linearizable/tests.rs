//! Hand-made histories that must pass and must fail, and random histories
//! of a real register that must pass (and fail once a read is made stale).

use super::*;

const K: &str = "k";

/// An operation of `client` from `invoked` to `completed` (in ms).
fn op(client: usize, op: Op, outcome: Outcome, invoked: u64, completed: u64) -> Entry {
    Entry {
        client,
        key: K.to_string(),
        op,
        outcome,
        invoked: invoked * 1_000_000,
        completed: completed * 1_000_000,
        revision: 0,
    }
}

fn write(client: usize, value: u64, invoked: u64, completed: u64) -> Entry {
    op(
        client,
        Op::Write(value),
        Outcome::Written,
        invoked,
        completed,
    )
}

fn read(client: usize, seen: Option<u64>, invoked: u64, completed: u64) -> Entry {
    op(client, Op::Read, Outcome::Read(seen), invoked, completed)
}

fn verdict(entries: Vec<Entry>) -> Verdict {
    check(&History { entries })
}

fn refused(entries: Vec<Entry>) -> String {
    match verdict(entries) {
        Verdict::NotLinearizable {
            key, explanation, ..
        } => {
            assert_eq!(key, K);
            explanation
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn sequential_writes_and_reads_pass() {
    let history = vec![
        read(0, None, 0, 1),
        write(0, 1, 2, 3),
        read(1, Some(1), 4, 5),
        write(1, 2, 6, 7),
        read(0, Some(2), 8, 9),
    ];
    assert_eq!(verdict(history), Verdict::Linearizable);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [Some(1), Some(2)] {
        let history = vec![
            write(0, 1, 0, 1),
            write(1, 2, 2, 10),
            read(2, seen, 3, 4),
            read(2, Some(2), 11, 12),
        ];
        assert_eq!(verdict(history), Verdict::Linearizable, "{seen:?}");
    }
}

#[test]
fn a_stale_read_fails() {
    // 2 was acknowledged before the read began, which still sees 1.
    let explanation = refused(vec![
        write(0, 1, 0, 1),
        write(0, 2, 2, 3),
        read(1, Some(1), 4, 5),
    ]);
    assert!(explanation.contains("Read"), "{explanation}");
}

#[test]
fn a_lost_write_fails() {
    // 1 was acknowledged, then the key reads as never written.
    refused(vec![write(0, 1, 0, 1), read(1, None, 2, 3)]);
    // ... or as an older value, after a later read saw the write.
    refused(vec![
        write(0, 1, 0, 1),
        write(0, 2, 2, 3),
        read(1, Some(2), 4, 5),
        read(2, Some(1), 6, 7),
    ]);
}

#[test]
fn a_read_of_a_value_nobody_wrote_fails() {
    refused(vec![write(0, 1, 0, 1), read(1, Some(9), 2, 3)]);
}

#[test]
fn reads_must_agree_on_the_order_of_concurrent_writes() {
    // 1 and 2 race; one reader sees 1 then 2, the other 2 then 1, after
    // both writes were acknowledged: no single order explains both.
    refused(vec![
        write(0, 1, 0, 5),
        write(1, 2, 0, 5),
        read(2, Some(2), 6, 7),
        read(3, Some(1), 8, 9),
    ]);
}

#[test]
fn compare_and_set_follows_the_register() {
    let cas = |client, expected, new, swapped, at| {
        op(
            client,
            Op::Cas { expected, new },
            Outcome::Cas(swapped),
            at,
            at + 1,
        )
    };
    assert_eq!(
        verdict(vec![
            write(0, 1, 0, 1),
            cas(1, 1, 2, true, 2),
            cas(0, 1, 3, false, 4),
            read(1, Some(2), 6, 7),
        ]),
        Verdict::Linearizable
    );
    // A swap from a value the register did not hold.
    refused(vec![write(0, 1, 0, 1), cas(1, 5, 2, true, 2)]);
    // A refused swap although the register held the expected value.
    refused(vec![write(0, 1, 0, 1), cas(1, 1, 2, false, 2)]);
}

#[test]
fn unanswered_writes_may_or_may_not_have_happened() {
    let lost = |value, at| op(0, Op::Write(value), Outcome::Unknown, at, at);
    // Seen later: it took effect.
    assert_eq!(
        verdict(vec![
            write(1, 1, 0, 1),
            lost(2, 2),
            read(1, Some(2), 10, 11)
        ]),
        Verdict::Linearizable
    );
    // Never seen: it did not (or was overwritten unseen).
    assert_eq!(
        verdict(vec![
            write(1, 1, 0, 1),
            lost(2, 2),
            read(1, Some(1), 10, 11)
        ]),
        Verdict::Linearizable
    );
    // But it cannot take effect before it was asked for.
    refused(vec![read(1, Some(2), 0, 1), lost(2, 5)]);
    // Failed operations change nothing.
    let failed = op(0, Op::Write(3), Outcome::Failed, 2, 3);
    refused(vec![write(1, 1, 0, 1), failed, read(1, Some(3), 4, 5)]);
}

/// A small deterministic generator (xorshift64*), so runs repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A history of `clients` clients on a real register: each operation
/// takes effect at one instant between its invocation and completion,
/// some answers are lost (unknown).
fn simulated(seed: u64, clients: usize, per_client: usize) -> Vec<Entry> {
    let mut rng = Rng(seed);
    // (effect, client, invoked, completed): one client's operations do not
    // overlap; operations of different clients do.
    let mut timeline: Vec<(u64, usize, u64, u64)> = Vec::new();
    for client in 0..clients {
        let mut free = 0;
        for _ in 0..per_client {
            let invoked = free + rng.below(5);
            let effect = invoked + rng.below(20);
            let completed = effect + rng.below(20);
            free = completed + 1;
            timeline.push((effect, client, invoked, completed));
        }
    }
    timeline.sort();
    let mut register: Option<u64> = None;
    let mut next_value = 1;
    let mut entries = Vec::new();
    for (_, client, invoked, completed) in timeline {
        let (op_kind, outcome) = match rng.below(3) {
            0 => (Op::Read, Outcome::Read(register)),
            1 => {
                next_value += 1;
                register = Some(next_value);
                (Op::Write(next_value), Outcome::Written)
            }
            _ => {
                let expected = register.unwrap_or(0);
                let expected = if rng.below(2) == 0 {
                    expected
                } else {
                    expected + 1000
                };
                next_value += 1;
                let swapped = register == Some(expected);
                if swapped {
                    register = Some(next_value);
                }
                (
                    Op::Cas {
                        expected,
                        new: next_value,
                    },
                    Outcome::Cas(swapped),
                )
            }
        };
        let outcome = if op_kind != Op::Read && rng.below(20) == 0 {
            Outcome::Unknown
        } else {
            outcome
        };
        entries.push(Entry {
            client,
            key: K.to_string(),
            op: op_kind,
            outcome,
            invoked,
            completed,
            revision: 0,
        });
    }
    entries
}

#[test]
fn random_histories_of_a_real_register_pass() {
    for seed in 1..=20 {
        let history = simulated(seed, 6, 60);
        assert_eq!(verdict(history), Verdict::Linearizable, "seed {seed}");
    }
}

#[test]
fn a_random_history_with_a_read_made_stale_fails() {
    let mut failures = 0;
    for seed in 1..=20 {
        let mut history = simulated(seed, 4, 40);
        // The last read that saw a value: make it see one overwritten
        // (and acknowledged as such) before the read began.
        let Some(r) = history
            .iter()
            .rposition(|e| e.op == Op::Read && matches!(e.outcome, Outcome::Read(Some(_))))
        else {
            continue;
        };
        let begun = history[r].invoked;
        let acknowledged: Vec<u64> = history
            .iter()
            .filter(|e| e.completed < begun)
            .filter_map(|e| e.acknowledged_write())
            .collect();
        if acknowledged.len() < 2 {
            continue;
        }
        // An acknowledged value overwritten by a later acknowledged write,
        // both done before the read, can never be read again (values are
        // unique).
        history[r].outcome = Outcome::Read(Some(acknowledged[0]));
        let overwritten_before = history.iter().any(|e| {
            e.completed < begun
                && e.invoked
                    > history
                        .iter()
                        .find(|w| w.acknowledged_write() == Some(acknowledged[0]))
                        .unwrap()
                        .completed
                && e.acknowledged_write().is_some()
        });
        if !overwritten_before {
            continue;
        }
        assert!(
            matches!(verdict(history), Verdict::NotLinearizable { .. }),
            "seed {seed}"
        );
        failures += 1;
    }
    assert!(failures >= 10, "only {failures} seeds made a stale read");
}

#[test]
fn a_search_past_its_budget_is_inconclusive_not_a_pass() {
    let history = simulated(7, 6, 60);
    let entries: Vec<&Entry> = history.iter().collect();
    assert!(matches!(
        check_key(&entries, 10),
        Verdict::Inconclusive { .. }
    ));
}
