//! Checking a parsed file (with its flag overrides) into a [`Config`]:
//! every value is checked, and an error names the file, line and field at
//! fault.

use super::*;

impl Config {
    pub(super) fn check(
        file: ConfigFile,
        origin: &Origin,
        source: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let name = file.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        if name.is_empty() || name.contains(['=', ',']) || name.chars().any(char::is_whitespace) {
            return Err(origin.invalid(
                "name",
                format!("is {name:?}: expected a non-empty name without spaces, '=' or ','"),
            ));
        }
        let data_dir = file
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(origin.invalid("data_dir", "is empty: expected a directory path".into()));
        }

        let client_urls = file
            .listen_client_urls
            .unwrap_or_else(|| vec![DEFAULT_CLIENT_URL.to_string()]);
        let client_scheme = if client_urls.iter().any(|url| url.starts_with("https://")) {
            "https"
        } else {
            "http"
        };
        let listen_client =
            listen_addrs(origin, "listen_client_urls", &client_urls, client_scheme)?;
        let advertise_client_urls = file.advertise_client_urls.unwrap_or(client_urls);
        listen_addrs(
            origin,
            "advertise_client_urls",
            &advertise_client_urls,
            client_scheme,
        )?;
        let client_tls = check_client_tls(
            origin,
            client_scheme == "https",
            file.client_cert_file,
            file.client_key_file,
            file.client_trusted_ca_file,
            file.client_cert_auth.unwrap_or(false),
        )?;
        let allow_insecure_client = file.allow_insecure_client.unwrap_or(false);
        if client_tls.is_none() && !allow_insecure_client {
            if let Some(addr) = listen_client.iter().find(|addr| !addr.ip().is_loopback()) {
                return Err(origin.invalid(
                    "listen_client_urls",
                    format!(
                        "listens on {addr} without TLS: anyone who reaches it could read and change every key. \
                         Use https:// with client_cert_file and client_key_file (see `edgeconf cert`), \
                         or set allow_insecure_client = true to accept the risk"
                    ),
                ));
            }
        }

        let peer_urls = file
            .listen_peer_urls
            .unwrap_or_else(|| vec![DEFAULT_PEER_URL.to_string()]);
        let listen_peer = listen_addrs(origin, "listen_peer_urls", &peer_urls, "quic")?;
        let initial_advertise_peer_urls = file.initial_advertise_peer_urls.unwrap_or(peer_urls);
        listen_addrs(
            origin,
            "initial_advertise_peer_urls",
            &initial_advertise_peer_urls,
            "quic",
        )?;

        let initial_cluster = match file.initial_cluster {
            Some(text) => parse_initial_cluster(origin, &text)?,
            None => vec![(name.clone(), initial_advertise_peer_urls[0].clone())],
        };
        let own: Vec<&String> = initial_cluster
            .iter()
            .filter(|(member, _)| *member == name)
            .map(|(_, url)| url)
            .collect();
        if own.is_empty() {
            return Err(origin.invalid(
                "initial_cluster",
                format!("does not list this agent's name {name:?}: add `{name}=<peer url>`"),
            ));
        }
        if let Some(url) = own
            .iter()
            .find(|url| !initial_advertise_peer_urls.contains(url))
        {
            return Err(origin.invalid(
                "initial_cluster",
                format!(
                    "gives {name}={url}, which is not among initial_advertise_peer_urls {initial_advertise_peer_urls:?}"
                ),
            ));
        }

        let log_level = file.log_level.unwrap_or_else(|| "info".to_string());
        if !is_log_filter(&log_level) {
            return Err(origin.invalid(
                "log_level",
                format!(
                    "is {log_level:?}: expected a level such as \"info\" or \"edgeconf=debug\""
                ),
            ));
        }

        let heartbeat = file.heartbeat_interval.unwrap_or(100);
        if !(10..=10_000).contains(&heartbeat) {
            return Err(origin.invalid(
                "heartbeat_interval",
                format!("is {heartbeat}: expected milliseconds between 10 and 10000"),
            ));
        }
        let election = file.election_timeout.unwrap_or(1000);
        if election < 5 * heartbeat || election > 60_000 {
            return Err(origin.invalid(
                "election_timeout",
                format!(
                    "is {election}: expected milliseconds, at least 5 x heartbeat_interval ({}) and at most 60000",
                    5 * heartbeat
                ),
            ));
        }
        let peer_trust = file.peer_trust.unwrap_or_default();
        let parse_peer_keys = |field: &'static str, keys: &[String]| {
            keys.iter()
                .map(|key| {
                    crate::transport::tls::parse_key(key).map_err(|problem| {
                        origin.invalid(field, format!("in [peer_trust]: {problem}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let voter_keys = parse_peer_keys("voters", &peer_trust.voters)?;
        let mut peer_keys = parse_peer_keys("keys", &peer_trust.keys)?;
        for key in &voter_keys {
            if !peer_keys.contains(key) {
                peer_keys.push(*key);
            }
        }

        // A voter syncs its store every `snapshot_count` entries (or 5 s),
        // and each sync stalls its raft thread for tens of milliseconds
        // under load: etcd's default (100,000) keeps that to the 5 s timer
        // (BENCHMARKS.md, issue 19). An edge agent serves no followers: it
        // keeps a short raft log.
        let role = file.role.unwrap_or_default();
        let (default_count, default_catchup) = match role {
            Role::Voter => (100_000, 5_000),
            Role::Edge => (1_000, 100),
        };
        let snapshot_count = file.snapshot_count.unwrap_or(default_count);
        if snapshot_count == 0 {
            return Err(origin.invalid(
                "snapshot_count",
                "is 0: expected a positive number of entries".into(),
            ));
        }
        let trust_file = file.trust.unwrap_or_default();
        let pinned_root = check_pinned_root(origin, &trust_file)?;
        let trust = check_trust(origin, trust_file)?;
        let secrets = file.secrets.unwrap_or_default();
        Identities::load(&secrets.identity_files)
            .map_err(|err| origin.invalid("identity_files", format!("in [secrets]: {err}")))?;
        for recipient in &secrets.recipients {
            Recipient::parse(recipient).map_err(|problem| {
                origin.invalid("recipients", format!("in [secrets]: {problem}"))
            })?;
        }
        let listen_metrics = match &file.listen_metrics_url {
            None => None,
            Some(url) => Some(
                listen_addrs(
                    origin,
                    "listen_metrics_url",
                    std::slice::from_ref(url),
                    "http",
                )?[0],
            ),
        };
        let (render_root, render) =
            render::check_entries(source, file.render_root.as_deref(), file.render)?;
        let plugins = plugins::check_sections(source, file.plugin, file.validate, file.check)?;
        let labels = file.labels.unwrap_or_default();
        services::check_labels(&labels).map_err(|problem| origin.invalid("labels", problem))?;
        let own_url = &initial_advertise_peer_urls[0];
        let default_seeds = initial_cluster
            .iter()
            .filter(|(_, url)| url != own_url)
            .filter_map(|(_, url)| url.strip_prefix("quic://")?.parse().ok())
            .collect();
        let gossip = services::check_gossip(file.gossip.unwrap_or_default(), default_seeds, role)
            .map_err(|(field, problem)| origin.invalid(field, problem))?;
        check_peers_trusted(origin, &peer_keys, &initial_cluster, &gossip.seeds)?;
        let sync = check_edge_feed(origin, role, &voter_keys, file.sync)?;
        let max_staleness = match file.max_staleness.as_deref() {
            None => crate::edge::follow::DEFAULT_MAX_STALENESS,
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|limit| *limit >= std::time::Duration::from_secs(1))
                .ok_or_else(|| {
                    origin.invalid(
                        "max_staleness",
                        format!("is {text:?}: expected a duration of at least 1s, such as \"30s\" or \"5m\""),
                    )
                })?,
        };
        let upkeep = upkeep::check(upkeep::UpkeepFields {
            quota_backend_bytes: file.quota_backend_bytes,
            auto_compaction_mode: file.auto_compaction_mode.as_deref(),
            auto_compaction_retention: file.auto_compaction_retention.as_deref(),
            corrupt_check_interval: file.corrupt_check_interval.as_deref(),
        })
        .map_err(|(field, problem)| origin.invalid(field, problem))?;
        let check_plugins: Vec<String> = plugins
            .plugins
            .iter()
            .filter(|p| p.kind == PluginKind::HealthCheck)
            .map(|p| p.name.clone())
            .collect();
        let file_name = source.map_or("command line".to_string(), |p| p.display().to_string());
        let mut services = Vec::new();
        if file.service.len() > services::MAX_SERVICES {
            return Err(origin.invalid(
                "service",
                format!(
                    "has {} entries: an agent announces at most {}",
                    file.service.len(),
                    services::MAX_SERVICES
                ),
            ));
        }
        for (index, service) in file.service.into_iter().enumerate() {
            let location = format!(
                "{file_name}: [[service]] entry {} ({:?})",
                index + 1,
                service.name
            );
            let entry = services::check_service(service, &check_plugins)
                .map_err(services::located(location.clone()))?;
            if services.iter().any(|s: &ServiceEntry| s.id == entry.id) {
                return Err(services::located(location)((
                    "id",
                    format!(
                        "{:?} is used by another [[service]]: give each an id of its own",
                        entry.id
                    ),
                )));
            }
            services.push(entry);
        }
        Ok(Config {
            role,
            sync,
            max_staleness,
            stale_is_unhealthy: file.stale_is_unhealthy.unwrap_or(true),
            upkeep,
            voter_keys,
            labels,
            gossip,
            services,
            source: source.map(Path::to_path_buf),
            listen_metrics,
            render_root,
            render,
            plugins,
            name,
            data_dir,
            listen_client,
            advertise_client_urls,
            listen_peer,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: file.initial_cluster_state.unwrap_or_default(),
            log_level,
            heartbeat_interval: std::time::Duration::from_millis(heartbeat),
            election_timeout: std::time::Duration::from_millis(election),
            peer_keys,
            snapshot_count,
            snapshot_catchup_entries: file.snapshot_catchup_entries.unwrap_or(default_catchup),
            client_tls,
            allow_insecure_client,
            trust,
            pinned_root,
            identity_files: secrets.identity_files,
            recipients: secrets.recipients,
        })
    }
}

pub(super) fn listen_addrs(
    origin: &Origin,
    field: &'static str,
    urls: &[String],
    scheme: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    if urls.is_empty() {
        return Err(origin.invalid(
            field,
            format!("is empty: expected at least one URL such as \"{scheme}://127.0.0.1:PORT\""),
        ));
    }
    urls.iter()
        .map(|url| socket_addr(url, scheme).map_err(|problem| origin.invalid(field, problem)))
        .collect()
}

/// Parses `scheme://HOST:PORT`, where HOST is an IP address or `localhost`.
pub fn socket_addr(text: &str, scheme: &str) -> Result<SocketAddr, String> {
    let expected = format!("expected \"{scheme}://HOST:PORT\" with an IP address or localhost");
    let url = url::Url::parse(text).map_err(|err| format!("has {text:?}: {err}; {expected}"))?;
    if url.scheme() != scheme {
        return Err(format!(
            "has {text:?} with scheme {:?}; {expected}",
            url.scheme()
        ));
    }
    if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
        return Err(format!("has {text:?} with a path or query; {expected}"));
    }
    let port = url
        .port()
        .ok_or_else(|| format!("has {text:?} without a port; {expected}"))?;
    let not_an_ip = || format!("has {text:?} whose host is not an IP address; {expected}");
    let ip = match url.host().ok_or_else(not_an_ip)? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain("localhost") => IpAddr::V4(Ipv4Addr::LOCALHOST),
        // Non-http schemes keep the host opaque: parse it ourselves.
        url::Host::Domain(host) => host.parse().map_err(|_| not_an_ip())?,
    };
    Ok(SocketAddr::new(ip, port))
}

pub(super) fn parse_initial_cluster(
    origin: &Origin,
    text: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut members: Vec<(String, String)> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(origin.invalid(
                "initial_cluster",
                format!(
                    "has {entry:?}: expected NAME=quic://HOST:PORT entries separated by commas"
                ),
            ));
        };
        socket_addr(url, "quic").map_err(|problem| origin.invalid("initial_cluster", problem))?;
        if members.iter().any(|(_, known)| known == url) {
            return Err(origin.invalid("initial_cluster", format!("lists peer URL {url} twice")));
        }
        members.push((name.to_string(), url.to_string()));
    }
    if members.is_empty() {
        return Err(origin.invalid(
            "initial_cluster",
            "is empty: expected NAME=quic://HOST:PORT entries separated by commas".into(),
        ));
    }
    Ok(members)
}

/// An edge takes the feed only as attested by pinned voter keys, and keeps
/// the prefixes it is told to.
pub(super) fn check_edge_feed(
    origin: &Origin,
    role: Role,
    voter_keys: &[[u8; 32]],
    sync: Vec<String>,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    if role == Role::Edge && voter_keys.is_empty() {
        return Err(origin.invalid(
            "voters",
            "in [peer_trust] (peer_trust.voters) is empty, but an edge agent applies config only as attested by a voter: \
             list the voters' node keys (`edgeconf node-key --data-dir <its data_dir>` on each voter) in \
             [peer_trust] voters = [\"...\", ...]"
                .into(),
        ));
    }
    if sync.len() > crate::feed::wire::MAX_PREFIXES / 2 {
        return Err(origin.invalid(
            "sync",
            format!(
                "has {} prefixes: at most {} are allowed",
                sync.len(),
                crate::feed::wire::MAX_PREFIXES / 2
            ),
        ));
    }
    sync.into_iter()
        .map(|prefix| {
            if prefix.is_empty() || prefix.len() > crate::feed::wire::MAX_PREFIX_LEN {
                Err(origin.invalid(
                    "sync",
                    format!(
                        "has {prefix:?}: expected a key prefix such as \"/app/\" (1 to 1024 bytes)"
                    ),
                ))
            } else {
                Ok(prefix.into_bytes())
            }
        })
        .collect()
}

/// An agent with peers (other members in `initial_cluster`, or gossip
/// seeds) must pin their node keys: peers admit each other only by pinned
/// keys, so without any they would start, say "ready" and refuse each other
/// forever.
pub(super) fn check_peers_trusted(
    origin: &Origin,
    peer_keys: &[[u8; 32]],
    initial_cluster: &[(String, String)],
    seeds: &[SocketAddr],
) -> Result<(), ConfigError> {
    if !peer_keys.is_empty() || (initial_cluster.len() < 2 && seeds.is_empty()) {
        return Ok(());
    }
    let peers = if initial_cluster.len() >= 2 {
        let names: Vec<&str> = initial_cluster
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        format!(
            "initial_cluster names {} members ({})",
            names.len(),
            names.join(", ")
        )
    } else {
        format!("it has gossip seeds {seeds:?}")
    };
    Err(origin.invalid(
        "keys",
        format!(
            "in [peer_trust] (peer_trust.keys) is empty, but {peers}: peers admit each other only by pinned node keys, \
             so these members would refuse each other forever. Print each member's key with \
             `edgeconf node-key --data-dir <its data_dir>` and list every one of them in \
             [peer_trust] keys = [\"...\", ...]"
        ),
    ))
}

pub(super) fn check_pinned_root(
    origin: &Origin,
    file: &TrustFile,
) -> Result<crate::signing::root::PinnedRoot, ConfigError> {
    let mut keys = Vec::new();
    for text in &file.root_keys {
        let key = crate::signing::keys::parse_public_key(text)
            .map_err(|problem| origin.invalid("root_keys", format!("in [trust]: {problem}")))?;
        if keys.contains(&key) {
            return Err(origin.invalid("root_keys", format!("in [trust] lists {text} twice")));
        }
        keys.push(key);
    }
    let threshold = file.root_threshold.unwrap_or(1);
    if !keys.is_empty() && (threshold == 0 || threshold > keys.len()) {
        return Err(origin.invalid(
            "root_threshold",
            format!(
                "in [trust] is {threshold}: expected 1 to {} (the root_keys listed)",
                keys.len()
            ),
        ));
    }
    if keys.is_empty() && file.root_threshold.is_some() {
        return Err(origin.invalid(
            "root_threshold",
            "in [trust] is set but root_keys is empty: list the root keys".into(),
        ));
    }
    Ok(crate::signing::root::PinnedRoot { keys, threshold })
}

pub(super) fn check_trust(origin: &Origin, file: TrustFile) -> Result<TrustPolicy, ConfigError> {
    let parse_keys = |field: &'static str, keys: &[String], section: &str| {
        keys.iter()
            .map(|key| {
                crate::signing::keys::parse_public_key(key)
                    .map_err(|problem| origin.invalid(field, format!("in {section}: {problem}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let keys = parse_keys("keys", &file.keys, "[trust]")?;
    let mut prefixes: Vec<PrefixTrust> = Vec::new();
    for rule in &file.prefix {
        let section = format!("[[trust.prefix]] {:?}", rule.prefix);
        if rule.prefix.is_empty() {
            return Err(origin.invalid(
                "prefix",
                "in [[trust.prefix]] is empty: to protect every key set [trust] allow_unsigned = false".into(),
            ));
        }
        if prefixes
            .iter()
            .any(|known| known.prefix == rule.prefix.as_bytes())
        {
            return Err(origin.invalid("prefix", format!("{section} is listed twice")));
        }
        let rule_keys = parse_keys("keys", &rule.keys, &section)?;
        if rule_keys.is_empty() && keys.is_empty() {
            return Err(origin.invalid(
                "keys",
                format!("in {section} is empty and [trust] has no keys either: nobody could write under it"),
            ));
        }
        let signers: std::collections::BTreeSet<&[u8; 32]> =
            keys.iter().chain(&rule_keys).collect();
        let threshold = rule.threshold.unwrap_or(1);
        if threshold == 0 || threshold > signers.len() {
            return Err(origin.invalid(
                "threshold",
                format!(
                    "in {section} is {threshold}: expected 1 to {} (the distinct keys that may sign under it, its own and [trust] keys)",
                    signers.len()
                ),
            ));
        }
        prefixes.push(PrefixTrust {
            prefix: rule.prefix.clone().into_bytes(),
            keys: rule_keys,
            threshold,
            on_expiry: rule.on_expiry.unwrap_or_default(),
        });
    }
    let allow_unsigned = file.allow_unsigned.unwrap_or(true);
    if !allow_unsigned && keys.is_empty() {
        return Err(origin.invalid(
            "allow_unsigned",
            "is false but [trust] keys is empty: nobody could write any key outside a [[trust.prefix]]".into(),
        ));
    }
    Ok(TrustPolicy {
        keys,
        prefixes,
        allow_unsigned,
        // Known once the agent has its identity (see `agent.rs`).
        cluster_id: None,
        root_version: 0,
    })
}

pub(super) fn check_client_tls(
    origin: &Origin,
    https: bool,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    trusted_ca_file: Option<PathBuf>,
    cert_auth: bool,
) -> Result<Option<ClientTls>, ConfigError> {
    let readable = |field: &'static str, path: &PathBuf| {
        std::fs::metadata(path).map(|_| ()).map_err(|err| {
            origin.invalid(
                field,
                format!(
                    "is {}: {err} (make one with `edgeconf cert`)",
                    path.display()
                ),
            )
        })
    };
    if !https {
        if let Some((field, _)) = [
            ("client_cert_file", cert_file.is_some()),
            ("client_key_file", key_file.is_some()),
            ("client_cert_auth", cert_auth),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        {
            return Err(origin.invalid(
                field,
                "is set but listen_client_urls are http://: use https:// URLs to serve clients over TLS".into(),
            ));
        }
        return Ok(None);
    }
    let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
        return Err(origin.invalid(
            "listen_client_urls",
            "are https:// but client_cert_file or client_key_file is missing: set both (see `edgeconf cert issue`)".into(),
        ));
    };
    readable("client_cert_file", &cert_file)?;
    readable("client_key_file", &key_file)?;
    if let Some(ca) = &trusted_ca_file {
        readable("client_trusted_ca_file", ca)?;
    } else if cert_auth {
        return Err(origin.invalid(
            "client_cert_auth",
            "is true but client_trusted_ca_file is not set: name the CA that issues client certificates".into(),
        ));
    }
    Ok(Some(ClientTls {
        cert_file,
        key_file,
        trusted_ca_file,
        cert_auth,
    }))
}
