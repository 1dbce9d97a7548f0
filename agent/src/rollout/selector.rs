//! Label selectors: `region=eu,tier!=canary` (every term must hold; an
//! empty selector picks every agent).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {problem}")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Term {
    label: String,
    equal: bool,
    value: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let error = |problem: String| SelectorError {
            selector: text.to_string(),
            problem,
        };
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (label, equal, value) = if let Some((label, value)) = term.split_once("!=") {
                (label, false, value)
            } else if let Some((label, value)) = term.split_once('=') {
                (label, true, value)
            } else {
                return Err(error(format!(
                    "{term:?} is not LABEL=VALUE or LABEL!=VALUE"
                )));
            };
            let (label, value) = (label.trim(), value.trim());
            let valid = |text: &str| {
                !text.is_empty()
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            if !valid(label) || !valid(value) {
                return Err(error(format!(
                    "{term:?}: labels and values are letters, digits, '-', '_', '.' or '/'"
                )));
            }
            terms.push(Term {
                label: label.to_string(),
                equal,
                value: value.to_string(),
            });
        }
        Ok(Selector { terms })
    }

    /// Whether an agent with `labels` is selected. A `!=` term holds for
    /// an agent without the label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| {
            let has = labels.get(&term.label) == Some(&term.value);
            has == term.equal
        })
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms: Vec<String> = self
            .terms
            .iter()
            .map(|t| format!("{}{}{}", t.label, if t.equal { "=" } else { "!=" }, t.value))
            .collect();
        f.write_str(&terms.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn terms_all_hold_and_not_equal_holds_without_the_label() {
        let selector = Selector::parse("region=eu, tier!=canary").unwrap();
        assert_eq!(selector.to_string(), "region=eu,tier!=canary");
        assert!(selector.matches(&labels(&[("region", "eu")])));
        assert!(selector.matches(&labels(&[("region", "eu"), ("tier", "web")])));
        assert!(!selector.matches(&labels(&[("region", "eu"), ("tier", "canary")])));
        assert!(!selector.matches(&labels(&[("region", "us")])));
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let err = Selector::parse("region").unwrap_err().to_string();
        assert!(err.contains("LABEL=VALUE"), "{err}");
        let err = Selector::parse("region=e u").unwrap_err().to_string();
        assert!(err.contains("letters"), "{err}");
        assert!(Selector::parse("=eu").is_err());
    }
}
