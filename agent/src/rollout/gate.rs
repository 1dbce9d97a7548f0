//! The decision the leader makes on every tick, as a pure function of the
//! plan, the progress and what gossip says about the fleet.

use std::time::Duration;

use super::progress::Counts;
use super::{bucket, percent_threshold, Plan, Progress, Status, BUCKETS};
use crate::gossip::{Health, Record, State};

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet.
    Wait,
    /// Open the first stage.
    Open { threshold: u32 },
    /// Every healthy agent of the stage has the new value: start the gate.
    StartGate,
    /// The gate passed: open `stage`.
    Advance { stage: usize, threshold: u32 },
    /// The gate of the last stage passed: store the new value.
    Complete,
    /// Too many agents of the stage are unhealthy.
    RollBack { reason: String },
}

/// How the stage's agents are doing, with names for the status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    pub counts: Counts,
    /// `name: why`, for each failing agent.
    pub failing: Vec<String>,
    /// Agents of the stage that do not render the new value yet.
    pub pending: Vec<String>,
}

/// The agents `plan` selects: those whose labels match, except the ones
/// that left the fleet.
pub fn selected<'a>(plan: &'a Plan, members: &'a [Record]) -> impl Iterator<Item = &'a Record> {
    members
        .iter()
        .filter(move |m| m.state != State::Left && plan.selector.matches(&m.meta.labels))
}

/// The threshold of `stage`: the stage's share of a large fleet, but at
/// least enough to take the stage's share of the agents selected now
/// (rounded up, at least one), so a small fleet still gets a canary.
/// Never below `previous`: stages only grow.
pub fn threshold_for(
    id: &str,
    plan: &Plan,
    stage: usize,
    previous: u32,
    members: &[Record],
) -> u32 {
    let percent = plan.stages[stage];
    if percent >= 100.0 {
        return BUCKETS;
    }
    let mut buckets: Vec<u32> = selected(plan, members).map(|m| bucket(id, &m.id)).collect();
    buckets.sort_unstable();
    let wanted = ((percent / 100.0) * buckets.len() as f64).ceil().max(1.0) as usize;
    let enough = buckets.get(wanted - 1).map_or(0, |b| b + 1);
    percent_threshold(percent)
        .max(enough)
        .max(previous)
        .min(BUCKETS)
}

/// Looks at the agents in the current stage.
pub fn assess(id: &str, plan: &Plan, progress: &Progress, members: &[Record]) -> Assessment {
    let mut assessment = Assessment::default();
    for member in selected(plan, members) {
        assessment.counts.selected += 1;
        if bucket(id, &member.id) >= progress.threshold {
            continue;
        }
        assessment.counts.in_stage += 1;
        let down = matches!(member.state, State::Dead | State::Suspect);
        let Some(mark) = member.meta.rollouts.iter().find(|m| m.id == id) else {
            // It has not taken the new value: its health says nothing
            // about the change. One that is down converges when it is back.
            if down {
                assessment.counts.down += 1;
            } else {
                assessment.pending.push(member.id.to_string());
            }
            continue;
        };
        let rendered = mark.error.is_empty();
        let mut problems = Vec::new();
        if down {
            problems.push(format!(
                "{} after taking the new value",
                member.state.as_str()
            ));
        }
        if !rendered {
            problems.push(format!("cannot render the new value: {}", mark.error));
        }
        for check in &member.meta.checks {
            if check.health == Health::Critical {
                problems.push(format!("check {} critical: {}", check.name, check.output));
            }
        }
        for service in &member.meta.services {
            if service.health == Health::Critical {
                problems.push(format!(
                    "service {} critical: {}",
                    service.name, service.output
                ));
            }
        }
        if rendered {
            assessment.counts.updated += 1;
        }
        if !problems.is_empty() {
            assessment.counts.failing += 1;
            assessment
                .failing
                .push(format!("{}: {}", member.id, problems.join("; ")));
        } else {
            assessment.counts.healthy += 1;
        }
    }
    assessment
}

/// The next step of rollout `id` at `now_ms`.
pub fn decide(
    id: &str,
    plan: &Plan,
    progress: &Progress,
    members: &[Record],
    now_ms: i64,
) -> (Assessment, Decision) {
    let assessment = assess(id, plan, progress, members);
    if !progress.status.is_active() {
        return (assessment, Decision::Wait);
    }
    let Some(percent) = plan.stages.get(progress.stage) else {
        let reason = format!(
            "the progress names stage {} but the plan has {}",
            progress.stage + 1,
            plan.stages.len()
        );
        return (assessment, Decision::RollBack { reason });
    };
    if progress.threshold == 0 {
        let decision = if progress.status == Status::Running {
            Decision::Open {
                threshold: threshold_for(id, plan, 0, 0, members),
            }
        } else {
            Decision::Wait
        };
        return (assessment, decision);
    }
    let counts = &assessment.counts;
    if !plan.within_gate(counts.failing, counts.in_stage) {
        let mut shown: Vec<&str> = assessment
            .failing
            .iter()
            .map(String::as_str)
            .take(3)
            .collect();
        if assessment.failing.len() > 3 {
            shown.push("...");
        }
        let reason = format!(
            "stage {} of {} ({}%): {} of {} agents unhealthy, above --max-unhealthy {}% ({})",
            progress.stage + 1,
            plan.stages.len(),
            percent,
            counts.failing,
            counts.in_stage,
            plan.max_unhealthy,
            shown.join(", ")
        );
        return (assessment, Decision::RollBack { reason });
    }
    // Paused; or the selector takes no agent (a typo must not pass every
    // gate and store the value for everyone): hold, visibly.
    if progress.status == Status::Paused || counts.selected == 0 {
        return (assessment, Decision::Wait);
    }
    let decision = match progress.gate_started_unix_ms {
        None if assessment.pending.is_empty() => Decision::StartGate,
        None => Decision::Wait,
        Some(started) => {
            let waited = Duration::from_millis(now_ms.saturating_sub(started).max(0) as u64);
            if waited < plan.gate {
                Decision::Wait
            } else if progress.stage + 1 == plan.stages.len() {
                Decision::Complete
            } else {
                let stage = progress.stage + 1;
                Decision::Advance {
                    stage,
                    threshold: threshold_for(id, plan, stage, progress.threshold, members),
                }
            }
        }
    };
    (assessment, decision)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::gossip::{AgentCheck, Meta, RolloutMark, ServiceState};

    fn member(name: &str, state: State, labels: &[(&str, &str)]) -> Record {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>();
        Record::for_test(
            name,
            state,
            Meta {
                labels,
                ..Meta::default()
            },
        )
    }

    fn with_meta(mut record: Record, change: impl FnOnce(&mut Meta)) -> Record {
        let mut meta = (*record.meta).clone();
        change(&mut meta);
        record.meta = Arc::new(meta);
        record
    }

    fn rendered(record: Record, id: &str, error: &str) -> Record {
        with_meta(record, |meta| {
            meta.rollouts.push(RolloutMark {
                id: id.into(),
                error: error.into(),
            })
        })
    }

    fn critical(record: Record) -> Record {
        with_meta(record, |meta| {
            meta.services.push(ServiceState {
                id: "web".into(),
                name: "web".into(),
                address: "127.0.0.1".into(),
                port: 80,
                tags: Vec::new(),
                health: Health::Critical,
                output: "HTTP 500".into(),
            })
        })
    }

    fn fleet(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| member(&format!("e{i}"), State::Alive, &[("region", "eu")]))
            .collect()
    }

    #[test]
    fn small_fleets_get_a_canary_and_stages_only_grow() {
        let plan = Plan::parse("1,50,100", "1s", "0%", "region=eu").unwrap();
        let mut members = fleet(6);
        members.push(member("us", State::Alive, &[("region", "us")]));
        let first = threshold_for("r", &plan, 0, 0, &members);
        let progress = Progress {
            threshold: first,
            ..Progress::new(0)
        };
        let assessment = assess("r", &plan, &progress, &members);
        assert_eq!(
            assessment.counts.selected, 6,
            "the us agent is not selected"
        );
        assert_eq!(
            assessment.counts.in_stage, 1,
            "1% of 6 agents is one canary"
        );
        let second = threshold_for("r", &plan, 1, first, &members);
        assert!(second >= first);
        let progress = Progress {
            threshold: second,
            ..Progress::new(0)
        };
        assert_eq!(assess("r", &plan, &progress, &members).counts.in_stage, 3);
        assert_eq!(threshold_for("r", &plan, 2, second, &members), BUCKETS);
    }

    #[test]
    fn a_stage_waits_for_its_agents_then_its_gate_then_advances() {
        let plan = Plan::parse("50,100", "2s", "0%", "").unwrap();
        let members = fleet(4);
        let mut progress = Progress::new(0);
        let (_, decision) = decide("r", &plan, &progress, &members, 0);
        let Decision::Open { threshold } = decision else {
            panic!("expected the first stage to open, got {decision:?}");
        };
        progress.threshold = threshold;
        // Nobody has rendered yet.
        let (assessment, decision) = decide("r", &plan, &progress, &members, 10);
        assert_eq!(decision, Decision::Wait);
        assert_eq!(assessment.pending.len(), 2);
        // Everyone renders it.
        let members: Vec<Record> = members.into_iter().map(|m| rendered(m, "r", "")).collect();
        let (assessment, decision) = decide("r", &plan, &progress, &members, 20);
        assert_eq!(decision, Decision::StartGate);
        assert_eq!(assessment.counts.healthy, 2);
        progress.gate_started_unix_ms = Some(20);
        assert_eq!(
            decide("r", &plan, &progress, &members, 1_000).1,
            Decision::Wait
        );
        assert_eq!(
            decide("r", &plan, &progress, &members, 2_020).1,
            Decision::Advance {
                stage: 1,
                threshold: BUCKETS
            }
        );
        progress.stage = 1;
        progress.threshold = BUCKETS;
        progress.gate_started_unix_ms = Some(3_000);
        assert_eq!(
            decide("r", &plan, &progress, &members, 5_000).1,
            Decision::Complete
        );
        // Paused: no advance.
        progress.status = Status::Paused;
        assert_eq!(
            decide("r", &plan, &progress, &members, 9_000).1,
            Decision::Wait
        );
    }

    #[test]
    fn unhealthy_agents_in_the_stage_roll_it_back_within_the_allowance() {
        let plan = Plan::parse("100", "1s", "25%", "").unwrap();
        let mut members: Vec<Record> = fleet(4).into_iter().map(|m| rendered(m, "r", "")).collect();
        let progress = Progress {
            threshold: BUCKETS,
            ..Progress::new(0)
        };
        // A critical service on an agent that has not taken the value is
        // not held against it; it is awaited.
        let mut unmarked = critical(member("e9", State::Alive, &[]));
        let alone = std::slice::from_ref(&unmarked);
        let assessment = assess("r", &plan, &progress, alone);
        assert_eq!(
            (assessment.counts.failing, assessment.pending.len()),
            (0, 1)
        );
        unmarked.state = State::Dead;
        assert_eq!(assess("r", &plan, &progress, &[unmarked]).counts.down, 1);
        // The agent's own checks count too.
        let checked = with_meta(rendered(member("e8", State::Alive, &[]), "r", ""), |meta| {
            meta.checks.push(AgentCheck {
                name: "disk".into(),
                health: Health::Critical,
                output: "95% full".into(),
            })
        });
        let assessment = assess("r", &plan, &progress, &[checked]);
        assert_eq!(assessment.failing, ["e8: check disk critical: 95% full"]);
        // One of four (25%) is within the allowance.
        members[0] = critical(members[0].clone());
        assert_eq!(
            decide("r", &plan, &progress, &members, 1).1,
            Decision::StartGate
        );
        // Two of four are not; the reason names them and why.
        members[1] = rendered(member("e1", State::Alive, &[]), "r", "template error");
        members[2].state = State::Dead;
        // Down before taking the new value: neither failing nor awaited.
        members.push(member("e4", State::Dead, &[]));
        let (assessment, decision) = decide("r", &plan, &progress, &members, 1);
        assert_eq!(assessment.counts.down, 1);
        assert!(assessment.pending.is_empty());
        let Decision::RollBack { reason } = decision else {
            panic!("expected a rollback, got {decision:?}");
        };
        assert_eq!(assessment.counts.failing, 3);
        assert!(reason.contains("3 of 5 agents unhealthy"), "{reason}");
        assert!(
            reason.contains("e2: dead after taking the new value"),
            "{reason}"
        );
        assert!(
            reason.contains("e0: service web critical: HTTP 500"),
            "{reason}"
        );
        assert!(
            reason.contains("cannot render the new value: template error"),
            "{reason}"
        );
        // Agents that left are not counted: one of the two left is too many.
        members[2].state = State::Left;
        members[1] = rendered(member("e1", State::Left, &[]), "r", "");
        members.pop();
        let (assessment, decision) = decide("r", &plan, &progress, &members, 1);
        assert_eq!(assessment.counts.in_stage, 2);
        assert!(matches!(decision, Decision::RollBack { reason } if reason.contains("1 of 2")));
    }
}
