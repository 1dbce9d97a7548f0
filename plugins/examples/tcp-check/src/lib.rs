//! Health check: connects to each `host:port` in the args. Passing when all
//! connect; critical naming the ones that failed.
//!
//! Settings: `timeout_ms` (per connection, default 1000).

use std::time::Duration;

use edgeconf_plugin::Health;

fn check(args: &[String]) -> Health {
    if args.is_empty() {
        return Health::critical("tcp-check: no host:port arguments");
    }
    let timeout = match edgeconf_plugin::setting("timeout_ms") {
        None => Duration::from_millis(1000),
        Some(s) => match s.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                return Health::critical(format!("tcp-check: timeout_ms {s:?} is not a number"))
            }
        },
    };
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for arg in args {
        match parse_addr(arg) {
            Err(e) => failed.push(format!("{arg}: {e}")),
            Ok((host, port)) => match edgeconf_plugin::tcp_connect(host, port, timeout) {
                Ok(took) => ok.push(format!("{arg} in {}", format_latency(took))),
                Err(e) => failed.push(format!("{arg}: {e}")),
            },
        }
    }
    if failed.is_empty() {
        Health::passing(format!("connected to {}", ok.join(", ")))
    } else {
        let mut out = format!(
            "{} of {} failed: {}",
            failed.len(),
            args.len(),
            failed.join("; ")
        );
        if !ok.is_empty() {
            out.push_str(&format!(" (connected to {})", ok.join(", ")));
        }
        Health::critical(out)
    }
}

/// `host:port`, `[v6addr]:port`.
fn parse_addr(arg: &str) -> Result<(&str, u16), String> {
    let (host, port) = arg
        .rsplit_once(':')
        .ok_or_else(|| "expected host:port".to_string())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("expected host:port".to_string());
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("bad port {port:?}"))?;
    Ok((host, port))
}

fn format_latency(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us}µs")
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

edgeconf_plugin::health_check!(check);
