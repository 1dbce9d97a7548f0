//! A rollout plan as an operator asks for it (`--stages 1,10,50,100
//! --gate 60s --max-unhealthy 2%`), checked.

use std::time::Duration;

use super::Selector;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--stages {0:?}: {1}")]
    Stages(String, String),
    #[error("--gate {0:?}: expected a duration such as \"60s\" (from 1s to 24h)")]
    Gate(String),
    #[error("--max-unhealthy {0:?}: expected a percentage such as \"2%\" (0% to 100%)")]
    MaxUnhealthy(String),
    #[error(transparent)]
    Selector(#[from] super::SelectorError),
}

/// What an operator asked for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Percentages of the selected agents, rising, ending at 100.
    pub stages: Vec<f64>,
    /// How long each stage must stay healthy before the next.
    pub gate: Duration,
    /// The share of the stage's agents that may be unhealthy (0 to 100).
    pub max_unhealthy: f64,
    pub selector: Selector,
}

impl Plan {
    pub fn parse(
        stages: &str,
        gate: &str,
        max_unhealthy: &str,
        selector: &str,
    ) -> Result<Plan, PlanError> {
        let stage_error = |problem: &str| PlanError::Stages(stages.to_string(), problem.into());
        let parsed = stages
            .split(',')
            .map(|s| s.trim().trim_end_matches('%').parse::<f64>())
            .collect::<Result<Vec<f64>, _>>()
            .map_err(|_| stage_error("expected percentages such as 1,10,50,100"))?;
        if parsed.iter().any(|p| !(*p > 0.0 && *p <= 100.0)) {
            return Err(stage_error("each stage must be above 0 and at most 100"));
        }
        if parsed.windows(2).any(|w| w[0] >= w[1]) {
            return Err(stage_error("stages must rise"));
        }
        if parsed.last() != Some(&100.0) {
            return Err(stage_error("the last stage must be 100"));
        }
        let gate_value = humantime::parse_duration(gate)
            .ok()
            .filter(|g| *g >= Duration::from_secs(1) && *g <= Duration::from_secs(24 * 3600))
            .ok_or_else(|| PlanError::Gate(gate.to_string()))?;
        let max = max_unhealthy
            .trim()
            .strip_suffix('%')
            .unwrap_or(max_unhealthy.trim())
            .parse::<f64>()
            .ok()
            .filter(|m| (0.0..=100.0).contains(m))
            .ok_or_else(|| PlanError::MaxUnhealthy(max_unhealthy.to_string()))?;
        Ok(Plan {
            stages: parsed,
            gate: gate_value,
            max_unhealthy: max,
            selector: Selector::parse(selector)?,
        })
    }

    /// Whether `unhealthy` of `total` agents in a stage is within the gate.
    pub fn within_gate(&self, unhealthy: usize, total: usize) -> bool {
        total == 0 || unhealthy as f64 * 100.0 <= self.max_unhealthy * total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_parses_and_its_gate_counts_shares() {
        let plan = Plan::parse("1,10,50,100", "60s", "2%", "region=eu").unwrap();
        assert_eq!(plan.stages, [1.0, 10.0, 50.0, 100.0]);
        assert_eq!(plan.gate, Duration::from_secs(60));
        assert!(plan.within_gate(2, 100));
        assert!(!plan.within_gate(3, 100));
        assert!(!plan.within_gate(1, 10));
        assert!(plan.within_gate(0, 0));
    }

    #[test]
    fn bad_plans_name_the_flag() {
        let err = |r: Result<Plan, PlanError>| r.unwrap_err().to_string();
        assert!(err(Plan::parse("10,1,100", "60s", "2%", "")).contains("rise"));
        assert!(err(Plan::parse("1,10", "60s", "2%", "")).contains("last stage"));
        assert!(err(Plan::parse("a", "60s", "2%", "")).contains("--stages"));
        assert!(err(Plan::parse("0,100", "60s", "2%", "")).contains("above 0"));
        assert!(err(Plan::parse("100", "soon", "2%", "")).contains("--gate"));
        assert!(err(Plan::parse("100", "60s", "200%", "")).contains("--max-unhealthy"));
        assert!(err(Plan::parse("100", "60s", "2%", "tier")).contains("selector"));
    }
}
