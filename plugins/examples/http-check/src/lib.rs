//! Health check: GETs the URL in `args[0]` (needs `capabilities.http` for
//! its `host:port`).
//!
//! * `status` (setting, or `args[1]`): the expected status codes, as `200`,
//!   `200-299` or `200,204,301-308`; default `200-399`. Any other status is
//!   critical.
//! * `body_contains` (setting, or `args[2]`): critical when the body (the
//!   first 64 KiB) does not contain this text.
//! * `warn_ms` (setting, default 1000): warning when the answer takes longer.
//! * `timeout_ms` (setting, default 5000): critical when there is no answer
//!   within this time.
//!
//! A plugin has no clock, so "slow" is found by asking with a timeout of
//! `warn_ms` first; only when that times out is the URL asked again with the
//! rest of `timeout_ms`, and an answer then is a warning. The plugin entry's own
//! `timeout` must be longer than `timeout_ms` (the host also caps each GET
//! by the time left in the call).

use std::time::Duration;

use edgeconf_plugin::{Health, Response};

fn check(args: &[String]) -> Health {
    let Some(url) = args.first() else {
        return Health::critical("http-check: no URL argument");
    };
    let setting_or_arg = |name: &str, index: usize| {
        edgeconf_plugin::setting(name).or_else(|| args.get(index).cloned())
    };
    let expected = match setting_or_arg("status", 1) {
        None => StatusSet(vec![(200, 399)]),
        Some(s) => match StatusSet::parse(&s) {
            Ok(set) => set,
            Err(e) => return Health::critical(format!("http-check: {e}")),
        },
    };
    let body_contains = setting_or_arg("body_contains", 2).filter(|s| !s.is_empty());
    let warn_ms = match number_setting("warn_ms", 1000) {
        Ok(n) => n,
        Err(e) => return Health::critical(e),
    };
    let timeout_ms = match number_setting("timeout_ms", 5000) {
        Ok(n) => n.max(warn_ms),
        Err(e) => return Health::critical(e),
    };

    // Ask with a timeout of warn_ms; only if that times out, wait for the
    // rest of timeout_ms, and an answer then is slow.
    let first = edgeconf_plugin::http_get(url, Duration::from_millis(warn_ms));
    let (response, slow) = match first {
        Ok(r) => (r, false),
        Err(e) if e.contains("timed out") && timeout_ms > warn_ms => {
            match edgeconf_plugin::http_get(url, Duration::from_millis(timeout_ms - warn_ms)) {
                Ok(r) => (r, true),
                Err(e) => return Health::critical(format!("GET {url}: {e}")),
            }
        }
        Err(e) => return Health::critical(format!("GET {url}: {e}")),
    };
    verdict(
        url,
        &response,
        &expected,
        body_contains.as_deref(),
        slow,
        warn_ms,
    )
}

fn verdict(
    url: &str,
    response: &Response,
    expected: &StatusSet,
    body_contains: Option<&str>,
    slow: bool,
    warn_ms: u64,
) -> Health {
    let latency = if slow {
        format!("slower than {warn_ms}ms")
    } else {
        format!("within {warn_ms}ms")
    };
    let seen = format!(
        "GET {url}: status {}, {} bytes, {latency}",
        response.status,
        response.body.len()
    );
    if !expected.contains(response.status) {
        return Health::critical(format!("{seen}; expected status {expected}"));
    }
    if let Some(needle) = body_contains {
        if !contains(&response.body, needle.as_bytes()) {
            return Health::critical(format!("{seen}; body does not contain {needle:?}"));
        }
    }
    if slow {
        Health::warning(seen)
    } else {
        Health::passing(seen)
    }
}

fn number_setting(name: &str, default: u64) -> Result<u64, String> {
    match edgeconf_plugin::setting(name) {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("http-check: setting {name} = {s:?} is not a number")),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Accepted status codes: `200`, `200-299`, `200,204,301-308`.
struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    fn parse(s: &str) -> Result<StatusSet, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("bad status {part:?} (expected e.g. 200, 200-299 or 200,204)");
            let (lo, hi) = match part.split_once(['-', '.']) {
                Some((lo, hi)) => (lo, hi.trim_start_matches(['.', '='])),
                None => (part, part),
            };
            let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            ranges.push((lo, hi));
        }
        if ranges.is_empty() {
            return Err(format!("bad status {s:?}"));
        }
        Ok(StatusSet(ranges))
    }

    fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl std::fmt::Display for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

edgeconf_plugin::health_check!(check);
