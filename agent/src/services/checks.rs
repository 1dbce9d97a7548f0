//! Runs a service's checks on their intervals: HTTP (status and body),
//! TCP connect, TTL (the service reports itself) and health-check plugins.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Services;
use crate::config::{CheckKind, ServiceCheck, ServiceEntry};
use crate::gossip::Health;
use crate::plugins::host::CallContext;

/// How often a ttl check looks at its deadline.
const TTL_POLL: Duration = Duration::from_millis(250);

/// Runs every check of `entry` until aborted (the service deregistered).
pub async fn run(services: Arc<Services>, entry: ServiceEntry) {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, check) in entry.checks.iter().cloned().enumerate() {
        let (services, id) = (services.clone(), entry.id.clone());
        tasks.spawn(async move {
            if let CheckKind::Ttl { ttl } = check.kind {
                return watch_ttl(&services, &id, index, ttl).await;
            }
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let (health, output) = run_once(&services, &check).await;
                services.record(&id, index, health, output);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Critical until the first `service pass`, and whenever the last one is
/// older than `ttl`.
async fn watch_ttl(services: &Services, id: &str, index: usize, ttl: Duration) {
    let mut ticks = tokio::time::interval(TTL_POLL.min(ttl));
    loop {
        ticks.tick().await;
        let expired = services
            .ttl_deadline(id, index)
            .is_none_or(|deadline| Instant::now() >= deadline);
        if expired {
            let output = match services.ttl_deadline(id, index) {
                None => "waiting for the first `edgeconf service pass`".to_string(),
                Some(_) => format!(
                    "no `edgeconf service pass` within the ttl of {}",
                    humantime::format_duration(ttl)
                ),
            };
            services.record(id, index, Health::Critical, output);
        }
    }
}

/// One run of a check, bounded by its timeout.
pub async fn run_once(services: &Services, check: &ServiceCheck) -> (Health, String) {
    let timeout = check.timeout;
    let outcome = match &check.kind {
        CheckKind::Http { url, status, body } => {
            tokio::time::timeout(timeout, http(url, *status, body.as_deref())).await
        }
        CheckKind::Tcp { addr } => tokio::time::timeout(timeout, tcp(addr)).await,
        CheckKind::Plugin {
            plugin,
            args,
            settings,
        } => {
            let Some(plugins) = services.plugins.clone() else {
                return (Health::Critical, "no plugins are loaded".into());
            };
            let context = CallContext {
                settings: Arc::new(settings.clone()),
                keys: None,
            };
            let (plugin, args) = (plugin.clone(), args.clone());
            let call = tokio::task::spawn_blocking(move || plugins.check(&plugin, &context, &args));
            Ok(match call.await {
                Ok(Ok(result)) => (result.status.into(), result.output),
                Ok(Err(err)) => (Health::Critical, format!("the plugin {err}")),
                Err(err) => (Health::Critical, format!("the check task failed: {err}")),
            })
        }
        CheckKind::Ttl { .. } => unreachable!("ttl checks are watched, not run"),
    };
    outcome.unwrap_or_else(|_| {
        (
            Health::Critical,
            format!("timed out after {}", humantime::format_duration(timeout)),
        )
    })
}

async fn http(
    url: &str,
    expect_status: Option<u16>,
    expect_body: Option<&str>,
) -> (Health, String) {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return (Health::Critical, format!("{url:?} is not a URL"));
    };
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(80);
    let (status, body) = match crate::plugins::host::fetch(uri, host, port).await {
        Ok(response) => response,
        Err(err) => return (Health::Critical, err),
    };
    let status_ok = match expect_status {
        Some(expected) => status == expected,
        None => (200..300).contains(&status),
    };
    if !status_ok {
        let wanted = expect_status.map_or("2xx".to_string(), |s| s.to_string());
        return (
            Health::Critical,
            format!("HTTP {status} from {url} (expected {wanted})"),
        );
    }
    if let Some(expected) = expect_body {
        if !String::from_utf8_lossy(&body).contains(expected) {
            return (
                Health::Critical,
                format!("HTTP {status} from {url}, but the body lacks {expected:?}"),
            );
        }
    }
    (Health::Passing, format!("HTTP {status}"))
}

async fn tcp(addr: &str) -> (Health, String) {
    match tokio::net::TcpStream::connect(addr).await {
        Ok(_) => (Health::Passing, format!("connected to {addr}")),
        Err(err) => (Health::Critical, format!("connecting to {addr}: {err}")),
    }
}
