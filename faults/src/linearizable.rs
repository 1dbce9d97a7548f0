//! Is a history of register operations linearizable? The Wing–Gong search
//! with Lowe's memoization, as Porcupine and Knossos run it.
//!
//! The history of one key becomes a list of call and return events in time
//! order. The search walks it from the front: a call may be linearized now
//! if the register model accepts it in the current state; it is then lifted
//! out of the list (with its return) and the walk starts again from the
//! front. Meeting a return means that operation had to take effect by then
//! and did not: undo the last choice and try the next call instead. A
//! (set of linearized operations, register state) pair already explored is
//! never explored again, which bounds the search by the distinct states
//! rather than by the orderings.
//!
//! Operations without an answer ([`Outcome::Unknown`]) return at the end of
//! time: they may take effect anywhere after their call, or at the very
//! end, which is the same as never. Operations that certainly failed, and
//! reads without an answer, change nothing and are left out.

use std::collections::HashSet;

use crate::history::{Entry, History, Op, Outcome};

/// How a check ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order of `key`'s operations fits a register.
    NotLinearizable {
        key: String,
        explanation: String,
        /// The operation the search could not place (for a post-mortem).
        stuck: Option<Entry>,
    },
    /// The search ran past its budget on `key` without an answer.
    Inconclusive {
        key: String,
        steps: u64,
    },
}

/// The search budget per key, in model steps: far above what the fault
/// suite's histories need (thousands), far below what would hang a run.
pub const STEP_BUDGET: u64 = 20_000_000;

/// Checks every key of `history`.
pub fn check(history: &History) -> Verdict {
    for (key, entries) in history.by_key() {
        match check_key(&entries, STEP_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable {
                explanation, stuck, ..
            } => {
                return Verdict::NotLinearizable {
                    key: key.to_string(),
                    explanation,
                    stuck,
                }
            }
            Verdict::Inconclusive { steps, .. } => {
                return Verdict::Inconclusive {
                    key: key.to_string(),
                    steps,
                }
            }
        }
    }
    Verdict::Linearizable
}

/// The register's state: the value written last (`None`: no key).
type State = Option<u64>;

/// The register model: the state after `entry` is linearized in `state`,
/// or `None` if its answer cannot be given in that state.
fn step(state: State, entry: &Entry) -> Option<State> {
    match (entry.op, entry.outcome) {
        (Op::Read, Outcome::Read(seen)) => (seen == state).then_some(state),
        (Op::Write(value), _) => Some(Some(value)),
        (Op::Cas { expected, new }, Outcome::Cas(true)) => {
            (state == Some(expected)).then_some(Some(new))
        }
        (Op::Cas { expected, .. }, Outcome::Cas(false)) => {
            (state != Some(expected)).then_some(state)
        }
        // Unanswered: if it took effect, it swapped exactly when it could.
        (Op::Cas { expected, new }, _) => Some(if state == Some(expected) {
            Some(new)
        } else {
            state
        }),
        (Op::Read, _) => Some(state),
    }
}

/// Whether `entry` takes part in the search.
fn relevant(entry: &Entry) -> bool {
    match entry.outcome {
        Outcome::Failed => false,
        Outcome::Unknown => entry.op != Op::Read,
        _ => true,
    }
}

/// The event list: a doubly linked list over arrays, so that lifting an
/// operation out and putting it back (in reverse order) cost nothing.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: its operation, and whether it is the call.
    op: Vec<usize>,
    call: Vec<bool>,
    /// For a call node: its return node.
    ret: Vec<usize>,
}

const HEAD: usize = 0;

impl Events {
    fn new(ops: &[&Entry]) -> (Events, usize) {
        // (time, returns after calls at the same time, node payload)
        let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, entry) in ops.iter().enumerate() {
            let returned = match entry.outcome {
                Outcome::Unknown => u64::MAX,
                _ => entry.completed.max(entry.invoked),
            };
            points.push((entry.invoked, false, i));
            points.push((returned, true, i));
        }
        points.sort();
        let nodes = points.len() + 2;
        let tail = nodes - 1;
        let mut events = Events {
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|i| i.saturating_sub(1)).collect(),
            op: vec![usize::MAX; nodes],
            call: vec![false; nodes],
            ret: vec![0; nodes],
        };
        let mut call_node = vec![0; ops.len()];
        for (n, &(_, is_return, op)) in points.iter().enumerate() {
            let node = n + 1;
            events.op[node] = op;
            events.call[node] = !is_return;
            if is_return {
                events.ret[call_node[op]] = node;
            } else {
                call_node[op] = node;
            }
        }
        (events, tail)
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.ret[call]);
    }

    fn unlift(&mut self, call: usize) {
        self.relink(self.ret[call]);
        self.relink(call);
    }
}

/// Checks the operations of one key, within `budget` model steps.
pub fn check_key(entries: &[&Entry], budget: u64) -> Verdict {
    let ops: Vec<&Entry> = entries.iter().copied().filter(|e| relevant(e)).collect();
    let key = entries.first().map(|e| e.key.clone()).unwrap_or_default();
    let (mut events, tail) = Events::new(&ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    // For the explanation: the deepest point reached, and what stuck it.
    let (mut deepest, mut stuck_at) = (0, None);
    let mut entry = events.next[HEAD];
    let mut steps = 0u64;
    while events.next[HEAD] != tail {
        steps += 1;
        if steps > budget {
            return Verdict::Inconclusive { key, steps };
        }
        if entry != tail && events.call[entry] {
            let op = events.op[entry];
            if let Some(after) = step(state, ops[op]) {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    events.lift(entry);
                    entry = events.next[HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            entry = events.next[entry];
            continue;
        }
        // A return whose operation is not linearized yet: back up.
        if stack.len() >= deepest {
            deepest = stack.len();
            stuck_at = (entry != tail).then(|| events.op[entry]);
        }
        let Some((call, before)) = stack.pop() else {
            return Verdict::NotLinearizable {
                key,
                explanation: explain(&ops, deepest, stuck_at),
                stuck: stuck_at.map(|op| ops[op].clone()),
            };
        };
        let op = events.op[call];
        linearized[op / 64] &= !(1 << (op % 64));
        state = before;
        events.unlift(call);
        entry = events.next[call];
    }
    Verdict::Linearizable
}

fn explain(ops: &[&Entry], deepest: usize, stuck_at: Option<usize>) -> String {
    let stuck = stuck_at.map_or("?".to_string(), |op| {
        let e = ops[op];
        format!(
            "client {} {:?} -> {:?} (invoked at {:.3} s, answered at {:.3} s)",
            e.client,
            e.op,
            e.outcome,
            e.invoked as f64 / 1e9,
            e.completed as f64 / 1e9
        )
    });
    format!(
        "no order of its {} operations fits a register: at most {deepest} could be ordered before this one had to take effect and could not: {stuck}",
        ops.len()
    )
}

#[cfg(test)]
mod tests;
