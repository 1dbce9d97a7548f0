//! `/metrics` (Prometheus text format) and `/health` on a local HTTP port
//! (`listen_metrics_url`).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::consensus::Node;
use crate::plugins::{checks::Health, AgentPlugins, PluginStats};
use crate::render::status::{EntryStatus, RenderStatus};

/// A metric with one series per item (file, plugin): name, type, help
/// and how to read it from the item.
type Series<T> = (&'static str, &'static str, &'static str, fn(&T) -> f64);

/// Writes each metric of `series` for every item, labelled `key="label"`.
fn write_series<T>(out: &mut String, series: &[Series<T>], key: &str, items: &[(String, &T)]) {
    for (name, kind, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (item_label, item) in items {
            let _ = writeln!(
                out,
                "{name}{{{key}=\"{}\"}} {}",
                label(item_label),
                value(item)
            );
        }
    }
}

/// What the metrics are read from.
#[derive(Clone)]
pub struct Sources {
    pub node: Arc<Node>,
    pub renders: Arc<RenderStatus>,
    pub plugins: AgentPlugins,
    pub membership: Arc<crate::gossip::Membership>,
    pub services: Arc<crate::services::Services>,
    /// An edge's feed follower (none on voters).
    pub feed: Option<std::sync::Arc<crate::edge::follow::FollowStatus>>,
}

/// The metrics as Prometheus text.
pub fn render_text(sources: &Sources) -> String {
    let mut out = String::new();
    let node = &sources.node;
    let identity = node.identity();
    let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        &mut out,
        "edgeconf_store_revision",
        "The last committed store revision.",
        node.store().revision() as f64,
    );
    gauge(
        &mut out,
        "edgeconf_store_size_bytes",
        "Size of the store file.",
        node.store().size_bytes() as f64,
    );
    gauge(
        &mut out,
        "edgeconf_raft_term",
        "The current raft term.",
        node.term() as f64,
    );
    gauge(
        &mut out,
        "edgeconf_raft_applied_index",
        "The last raft index applied.",
        node.applied_index() as f64,
    );
    gauge(
        &mut out,
        "edgeconf_is_leader",
        "1 when this member leads the cluster.",
        f64::from(u8::from(node.leader() == identity.member_id)),
    );

    if let Some(feed) = &sources.feed {
        feed_metrics(&mut out, feed);
    }
    alarm_metrics(&mut out, node.store());
    crate::telemetry::render(&mut out);
    peer_metrics(&mut out, node);
    let _ = writeln!(
        out,
        "# HELP edgeconf_raft_refused_total Raft messages and frames refused (a sender that is not a member, not verified yet, not a voter key, or speaking for another member; an oversized, undecodable or invalid snapshot frame; a snapshot while another is received; a notice that the leader's log is durable from a member that does not lead).\n\
         # TYPE edgeconf_raft_refused_total counter"
    );
    for (reason, count) in node.transport().senders().refused() {
        let _ = writeln!(
            out,
            "edgeconf_raft_refused_total{{reason=\"{reason}\"}} {count}"
        );
    }

    let _ = writeln!(
        out,
        "# HELP edgeconf_forwarded_refused_total Entries followers forwarded that this member, as leader, refused (the log says why).\n\
         # TYPE edgeconf_forwarded_refused_total counter\n\
         edgeconf_forwarded_refused_total {}",
        node.forwarded_refused()
    );

    let files = sources.renders.snapshot();
    let series: [Series<EntryStatus>; 8] = [
        (
            "edgeconf_render_renders_total",
            "counter",
            "Renders attempted.",
            |s| s.renders as f64,
        ),
        (
            "edgeconf_render_writes_total",
            "counter",
            "Renders that changed the file.",
            |s| s.writes as f64,
        ),
        (
            "edgeconf_render_failing",
            "gauge",
            "1 while the last render failed (the last good file stays).",
            |s| f64::from(u8::from(s.error.is_some())),
        ),
        (
            "edgeconf_render_revision",
            "gauge",
            "The store revision the file was last rendered from.",
            |s| s.revision as f64,
        ),
        (
            "edgeconf_render_last_success_timestamp_seconds",
            "gauge",
            "When the file was last rendered.",
            |s| s.rendered_unix_ms as f64 / 1000.0,
        ),
        (
            "edgeconf_render_reloads_total",
            "counter",
            "Reload commands run for the file.",
            |s| s.reloads as f64,
        ),
        (
            "edgeconf_render_reload_failures_total",
            "counter",
            "Reload commands that failed.",
            |s| s.reload_failures as f64,
        ),
        (
            "edgeconf_render_drift_repairs_total",
            "counter",
            "Hand edits undone.",
            |s| s.drift_repairs as f64,
        ),
    ];
    // No [[render]] entries: no per-file series at all.
    if !files.is_empty() {
        let items: Vec<(String, &EntryStatus)> =
            files.iter().map(|file| (file.dest.clone(), file)).collect();
        write_series(&mut out, &series, "dest", &items);
    }
    plugin_metrics(&mut out, &sources.plugins);
    fleet_metrics(&mut out, sources);
    out
}

/// On the leader: each member's replication lag and whether it answers.
fn peer_metrics(out: &mut String, node: &crate::consensus::Node) {
    let _ = writeln!(
        out,
        "# HELP edgeconf_raft_peer_lag_entries On the leader: entries committed that a member's log lacks.\n# TYPE edgeconf_raft_peer_lag_entries gauge\n\
         # HELP edgeconf_raft_peer_reachable On the leader: 1 when a member answered within the election timeout.\n# TYPE edgeconf_raft_peer_reachable gauge"
    );
    let commit = node.commit_index();
    for peer in node.peer_progress() {
        let member = format!("{:x}", peer.id);
        let _ = writeln!(
            out,
            "edgeconf_raft_peer_lag_entries{{member=\"{member}\"}} {}\nedgeconf_raft_peer_reachable{{member=\"{member}\"}} {}",
            commit.saturating_sub(peer.matched),
            u8::from(peer.recently_active)
        );
    }
}

/// etcd's alarms in force (NOSPACE, CORRUPT), one series per member and
/// alarm; none when there are none.
fn alarm_metrics(out: &mut String, store: &crate::store::Store) {
    let _ = writeln!(
        out,
        "# HELP edgeconf_alarm 1 for each alarm in force (`etcdctl alarm list`).\n# TYPE edgeconf_alarm gauge"
    );
    for active in crate::upkeep::alarms::active(store).unwrap_or_default() {
        let _ = writeln!(
            out,
            "edgeconf_alarm{{alarm=\"{}\",member=\"{:x}\"}} 1",
            active.alarm.name(),
            active.member
        );
    }
}

/// Gossip members by state, local health, and this agent's services.
fn fleet_metrics(out: &mut String, sources: &Sources) {
    use crate::gossip::State;
    let members = sources.membership.members();
    let _ = writeln!(out, "# HELP edgeconf_gossip_members Members of the fleet as this agent sees them, by state.\n# TYPE edgeconf_gossip_members gauge");
    for state in [State::Alive, State::Suspect, State::Dead, State::Left] {
        let count = members.iter().filter(|m| m.state == state).count();
        let _ = writeln!(
            out,
            "edgeconf_gossip_members{{state=\"{}\"}} {count}",
            state.as_str()
        );
    }
    let _ = writeln!(out, "# HELP edgeconf_gossip_refused_total Gossip updates and messages refused, by reason (bad_signature, key_changed, untrusted_key, unknown_signer, impersonation, impossible_incarnation, table_full).\n# TYPE edgeconf_gossip_refused_total counter");
    for (reason, count) in sources.membership.refused() {
        let _ = writeln!(
            out,
            "edgeconf_gossip_refused_total{{reason=\"{reason}\"}} {count}"
        );
    }
    let _ = writeln!(out, "# HELP edgeconf_gossip_health_score Lifeguard's local health multiplier (0 is healthy).\n# TYPE edgeconf_gossip_health_score gauge\nedgeconf_gossip_health_score {}", sources.membership.awareness());
    if let Some(me) = members.first().filter(|me| !me.meta.rollouts.is_empty()) {
        let _ = writeln!(out, "# HELP edgeconf_rollout_staged Rollouts whose new value this agent renders: 1 rendered, 0 failed to render.\n# TYPE edgeconf_rollout_staged gauge");
        for mark in &me.meta.rollouts {
            let _ = writeln!(
                out,
                "edgeconf_rollout_staged{{rollout=\"{}\"}} {}",
                label(&mark.id),
                u8::from(mark.error.is_empty())
            );
        }
    }
    let local = sources.services.local();
    if local.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP edgeconf_service_check_status Service check result: 0 passing, 1 warning, 2 critical, -1 not run yet.\n# TYPE edgeconf_service_check_status gauge");
    for (entry, results) in &local {
        for result in results {
            let value = health_value(result.health);
            let _ = writeln!(
                out,
                "edgeconf_service_check_status{{service=\"{}\",check=\"{}\"}} {value}",
                label(&entry.id),
                label(&result.check)
            );
        }
    }
}

/// A check result as a gauge: 0 passing, 1 warning, 2 critical, -1 not
/// run yet.
fn health_value(health: Option<Health>) -> i32 {
    match health {
        None => -1,
        Some(Health::Passing) => 0,
        Some(Health::Warning) => 1,
        Some(Health::Critical) => 2,
    }
}

/// A Prometheus label value, escaped.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Per-plugin counters and per-check health (none without plugins).
fn plugin_metrics(out: &mut String, plugins: &AgentPlugins) {
    let Some(loaded) = &plugins.plugins else {
        return;
    };
    let infos = loaded.infos();
    let series: [Series<PluginStats>; 5] = [
        (
            "edgeconf_plugin_calls_total",
            "counter",
            "Calls into the plugin.",
            |s| s.calls as f64,
        ),
        (
            "edgeconf_plugin_failures_total",
            "counter",
            "Calls that ended without a verdict (timeout, memory limit, trap).",
            |s| s.failures as f64,
        ),
        (
            "edgeconf_plugin_refusals_total",
            "counter",
            "Values a validator refused.",
            |s| s.refusals as f64,
        ),
        (
            "edgeconf_plugin_reloads_total",
            "counter",
            "New plugin files swapped in.",
            |s| s.reloads as f64,
        ),
        (
            "edgeconf_plugin_reload_failing",
            "gauge",
            "1 while the newest plugin file was refused (the previous one runs).",
            |s| f64::from(u8::from(s.reload_error.is_some())),
        ),
    ];
    let items: Vec<(String, &PluginStats)> = infos
        .iter()
        .map(|info| (info.name.clone(), &info.stats))
        .collect();
    write_series(out, &series, "plugin", &items);
    let checks = plugins.checks.snapshot();
    if checks.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP edgeconf_check_status Health check result: 0 passing, 1 warning, 2 critical, -1 not run yet.\n# TYPE edgeconf_check_status gauge");
    for (name, state) in &checks {
        let value = health_value(state.health);
        let _ = writeln!(
            out,
            "edgeconf_check_status{{check=\"{}\",plugin=\"{}\"}} {value}",
            label(name),
            label(&state.plugin)
        );
    }
    let _ = writeln!(out, "# HELP edgeconf_check_runs_total Health check runs.\n# TYPE edgeconf_check_runs_total counter");
    for (name, state) in &checks {
        let _ = writeln!(
            out,
            "edgeconf_check_runs_total{{check=\"{}\"}} {}",
            label(name),
            state.runs
        );
    }
}

/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request headers, and to be done.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `/metrics` and `/health` on `addr` until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    sources: Sources,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|err| {
        anyhow::anyhow!("cannot listen for metrics on {addr}: {err} (change listen_metrics_url)")
    })?;
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors, say: back off rather than spin.
            Err(err) => {
                tracing::warn!(error = %err, "metrics server cannot accept; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // A scraper beyond the limit is turned away, not queued.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(answer(&request, &sources)) }
            });
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A connection that trickles or idles is cut off.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, serving).await;
        });
    }
}

fn answer(request: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render_text(sources),
        ),
        "/health" => match health(sources) {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", why),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /health\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response from fixed parts")
}

/// A voter is healthy with a known leader; an edge with a recent verified
/// voter timestamp (an offline edge keeps serving its files, but says it is
/// stale, and is unhealthy unless `stale_is_unhealthy = false`).
fn health(sources: &Sources) -> Result<(), String> {
    if let Some(reason) = sources.node.failure() {
        return Err(format!("consensus stopped: {reason}\n"));
    }
    match &sources.feed {
        None if sources.node.leader() != 0 => Ok(()),
        None => Err("no leader\n".into()),
        Some(feed) => match feed.staleness() {
            Some(problem) if feed.unhealthy_when_stale => Err(format!("{problem}\n")),
            _ => Ok(()),
        },
    }
}

fn feed_metrics(out: &mut String, feed: &crate::edge::follow::FollowStatus) {
    let voter_age = feed.seconds_since_voter_time().unwrap_or(-1.0);
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_voter_timestamp_age_seconds Age of the newest voter timestamp this edge verified (-1: none yet).\n\
         # TYPE edgeconf_feed_voter_timestamp_age_seconds gauge\nedgeconf_feed_voter_timestamp_age_seconds {voter_age}"
    );
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_stale 1 when no voter timestamp was verified within max_staleness.\n\
         # TYPE edgeconf_feed_stale gauge\nedgeconf_feed_stale {}",
        u8::from(feed.staleness().is_some())
    );
    let age = feed.seconds_since_contact().unwrap_or(-1.0);
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_seconds_since_contact Seconds since a peer last sent this edge a verified feed batch (-1: never).\n\
         # TYPE edgeconf_feed_seconds_since_contact gauge\nedgeconf_feed_seconds_since_contact {age}"
    );
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_verified_revision The newest revision this edge verified from the feed.\n\
         # TYPE edgeconf_feed_verified_revision gauge\nedgeconf_feed_verified_revision {}",
        feed.verified_revision.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_revisions_behind Revisions between the newest a voter signed it had and the newest this edge verified.\n\
         # TYPE edgeconf_feed_revisions_behind gauge\nedgeconf_feed_revisions_behind {}",
        feed.revisions_behind()
    );
    let _ = writeln!(
        out,
        "# HELP edgeconf_feed_refused_total Feed batches and images refused, by what the relay got wrong.\n\
         # TYPE edgeconf_feed_refused_total counter"
    );
    for (reason, count) in feed.refused() {
        let _ = writeln!(
            out,
            "edgeconf_feed_refused_total{{reason=\"{reason}\"}} {count}"
        );
    }
}
