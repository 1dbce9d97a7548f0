//! What a reload (SIGHUP) applies and what needs a restart. `[trust]`,
//! `[secrets]`, `[labels]`, `[[service]]`, `[peer_trust]` (but an edge's
//! `voters`), and `[[validate]]` and `[[check]]` over the `[[plugin]]`s
//! loaded at start apply on SIGHUP; `[[render]]`
//! entries and templates apply when the file changes (the renderer watches
//! it); every other setting is read once, at start: the log names those
//! that changed.

use super::Config;

/// The settings that differ between `running` and `fresh` and take effect
/// only after a restart, by their names in the file.
pub fn needs_restart(running: &Config, fresh: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("name", running.name != fresh.name);
    check("data_dir", running.data_dir != fresh.data_dir);
    check(
        "listen_client_urls",
        running.listen_client != fresh.listen_client,
    );
    check(
        "advertise_client_urls",
        running.advertise_client_urls != fresh.advertise_client_urls,
    );
    check("listen_peer_urls", running.listen_peer != fresh.listen_peer);
    check(
        "initial_advertise_peer_urls",
        running.initial_advertise_peer_urls != fresh.initial_advertise_peer_urls,
    );
    check(
        "initial_cluster",
        running.initial_cluster != fresh.initial_cluster,
    );
    check("log_level", running.log_level != fresh.log_level);
    check(
        "heartbeat_interval / election_timeout",
        running.heartbeat_interval != fresh.heartbeat_interval
            || running.election_timeout != fresh.election_timeout,
    );
    check(
        "[peer_trust] voters (on an edge)",
        running.role == super::Role::Edge && running.voter_keys != fresh.voter_keys,
    );
    check(
        "snapshot_count / snapshot_catchup_entries",
        running.snapshot_count != fresh.snapshot_count
            || running.snapshot_catchup_entries != fresh.snapshot_catchup_entries,
    );
    check(
        "client TLS / allow_insecure_client",
        running.client_tls != fresh.client_tls
            || running.allow_insecure_client != fresh.allow_insecure_client,
    );
    check(
        "[trust] root_keys",
        running.pinned_root != fresh.pinned_root,
    );
    check(
        "listen_metrics_url",
        running.listen_metrics != fresh.listen_metrics,
    );
    check("render_root", running.render_root != fresh.render_root);
    check(
        "[[plugin]]",
        running.plugins.plugins != fresh.plugins.plugins,
    );
    check(
        "role / sync",
        running.role != fresh.role || running.sync != fresh.sync,
    );
    check(
        "max_staleness / stale_is_unhealthy",
        running.max_staleness != fresh.max_staleness
            || running.stale_is_unhealthy != fresh.stale_is_unhealthy,
    );
    check(
        "quota / auto-compaction / corrupt_check_interval",
        running.upkeep != fresh.upkeep,
    );
    check("[gossip]", running.gossip != fresh.gossip);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_changed_and_is_not_reloaded_is_named() {
        let running = Config::load(None, super::super::ConfigFile::default()).unwrap();
        let same = running.clone();
        assert!(needs_restart(&running, &same).is_empty());
        let mut fresh = running.clone();
        fresh.labels.insert("region".into(), "eu".into());
        fresh.log_level = "debug".into();
        fresh.trust.allow_unsigned = !fresh.trust.allow_unsigned;
        fresh.render_root = Some("/elsewhere".into());
        assert_eq!(
            needs_restart(&running, &fresh),
            ["log_level", "render_root"]
        );
        // Peer trust reloads, but an edge's voters take a restart.
        let mut fresh = running.clone();
        fresh.peer_keys.push([7; 32]);
        fresh.voter_keys.push([7; 32]);
        assert!(needs_restart(&running, &fresh).is_empty());
        let mut edge = running.clone();
        edge.role = super::super::Role::Edge;
        let mut fresh = edge.clone();
        fresh.voter_keys.push([7; 32]);
        assert_eq!(
            needs_restart(&edge, &fresh),
            ["[peer_trust] voters (on an edge)"]
        );
    }
}
