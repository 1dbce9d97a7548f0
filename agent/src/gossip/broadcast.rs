//! Updates waiting to be piggybacked: each is sent a limited number of
//! times (a multiple of log n, enough for epidemic spread), least-sent
//! first, and a newer update about a member replaces the queued one.

use std::collections::HashMap;

use super::message::{NodeId, Update};

struct Queued {
    update: Update,
    transmits: u32,
    /// Insertion order, to prefer fresher updates among equals.
    order: u64,
}

#[derive(Default)]
pub struct Broadcasts {
    queued: HashMap<NodeId, Queued>,
    next_order: u64,
}

impl Broadcasts {
    /// Queues `update`, replacing any queued update about the same member.
    pub fn push(&mut self, update: Update) {
        self.next_order += 1;
        self.queued.insert(
            update.subject().clone(),
            Queued {
                update,
                transmits: 0,
                order: self.next_order,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Up to `max` updates for one message, least-sent (then newest)
    /// first; each counts as sent once, and is dropped after `limit` sends.
    /// An update about `priority` (a suspect being probed) goes first.
    pub fn take(&mut self, max: usize, limit: u32, priority: Option<&NodeId>) -> Vec<Update> {
        if self.queued.is_empty() || max == 0 {
            return Vec::new();
        }
        let mut picks: Vec<(&NodeId, u32, u64)> = self
            .queued
            .iter()
            .map(|(id, q)| (id, q.transmits, q.order))
            .collect();
        picks.sort_by(|a, b| {
            let first = |id: &NodeId| Some(id) != priority;
            (first(a.0), a.1, std::cmp::Reverse(a.2)).cmp(&(
                first(b.0),
                b.1,
                std::cmp::Reverse(b.2),
            ))
        });
        let chosen: Vec<NodeId> = picks
            .into_iter()
            .take(max)
            .map(|(id, _, _)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for id in chosen {
            let Some(queued) = self.queued.get_mut(&id) else {
                continue;
            };
            queued.transmits += 1;
            out.push(queued.update.clone());
            if queued.transmits >= limit {
                self.queued.remove(&id);
            }
        }
        out
    }
}
