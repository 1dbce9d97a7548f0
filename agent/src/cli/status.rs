//! `edgeconf status`: one line per endpoint, like `etcdctl endpoint status`.

use serde_json::json;

use super::output::{format_size, format_time, header_json, print_json, print_table, Format};
use super::Client;
use crate::api::pb::{PluginsRequest, PluginsResponse, RenderedFile, RendersRequest};

pub async fn status(client: &Client, format: Format) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for endpoint in &client.endpoints {
        // A client of this endpoint alone, so errors name it.
        let one = client.for_endpoint(endpoint);
        let answer = async {
            let mut etcd = one.etcd_at(std::slice::from_ref(endpoint)).await?;
            one.request(etcd.status()).await
        }
        .await;
        match answer {
            Ok(status) => {
                let files = renders(&one).await;
                let plugins = plugins(&one).await;
                rows.push((endpoint.clone(), status, files, plugins));
            }
            Err(err) => failures.push(err.to_string()),
        }
    }
    match format {
        Format::Json => print_json(&json!(rows
            .iter()
            .map(|(endpoint, s, files, plugins)| json!({
                "endpoint": endpoint,
                "renders": files.iter().map(render_json).collect::<Vec<_>>(),
                "plugins": plugins.plugins.iter().map(|p| json!({
                    "name": p.name,
                    "kind": p.kind,
                    "path": p.path,
                    "digest": p.digest,
                    "calls": p.calls,
                    "failures": p.failures,
                    "refusals": p.refusals,
                    "last_failure": p.last_failure,
                    "reloads": p.reloads,
                    "reload_error": p.reload_error,
                    "loaded_unix_ms": p.loaded_unix_ms,
                })).collect::<Vec<_>>(),
                "checks": plugins.checks.iter().map(|c| json!({
                    "name": c.name,
                    "plugin": c.plugin,
                    "status": c.status,
                    "output": c.output,
                    "runs": c.runs,
                    "plugin_failures": c.plugin_failures,
                    "checked_unix_ms": c.checked_unix_ms,
                    "since_unix_ms": c.since_unix_ms,
                    "interval_ms": c.interval_ms,
                })).collect::<Vec<_>>(),
                "header": header_json(s.header()),
                "version": s.version(),
                "db_size": s.db_size(),
                "leader": s.leader(),
                "raft_index": s.raft_index(),
                "raft_term": s.raft_term(),
                "errors": s.errors(),
            }))
            .collect::<Vec<_>>())),
        _ => {
            let lines = rows.iter().map(|(endpoint, s, _, _)| {
                let member_id = s.header().map_or(0, |h| h.member_id());
                vec![
                    endpoint.clone(),
                    format!("{member_id:x}"),
                    s.version().to_string(),
                    format_size(s.db_size() as u64),
                    (s.leader() == member_id).to_string(),
                    s.raft_term().to_string(),
                    s.raft_index().to_string(),
                    s.header().map_or(0, |h| h.revision()).to_string(),
                    // What `edgeconf sign --cluster-id` binds a change to.
                    format!("{:x}", s.header().map_or(0, |h| h.cluster_id())),
                    s.errors().join("; "),
                ]
            });
            let headers = [
                "ENDPOINT",
                "ID",
                "VERSION",
                "DB SIZE",
                "IS LEADER",
                "RAFT TERM",
                "RAFT INDEX",
                "REVISION",
                "CLUSTER",
                "ERRORS",
            ];
            if format == Format::Table {
                print_table(&headers, lines);
            } else {
                for mut line in lines {
                    // No trailing empty ERRORS field in the simple format.
                    if line.last().is_some_and(String::is_empty) {
                        line.pop();
                    }
                    println!("{}", line.join(", "));
                }
            }
            print_renders(format, &rows);
            print_plugins(format, &rows);
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// The endpoint's rendered files (none if it renders nothing, or is an
/// older agent without the RPC).
async fn renders(client: &Client) -> Vec<RenderedFile> {
    let answer = async {
        let mut edgeconf = client.edgeconf().await?;
        client.request(edgeconf.renders(RendersRequest {})).await
    }
    .await;
    answer.map(|r| r.into_inner().files).unwrap_or_default()
}

/// The endpoint's plugins and checks (none from an older agent).
async fn plugins(client: &Client) -> PluginsResponse {
    let answer = async {
        let mut edgeconf = client.edgeconf().await?;
        client.request(edgeconf.plugins(PluginsRequest {})).await
    }
    .await;
    answer.map(|r| r.into_inner()).unwrap_or_default()
}

/// What is wrong with a rendered file, or "ok".
fn problem(file: &RenderedFile) -> String {
    let mut problems = Vec::new();
    if !file.error.is_empty() {
        problems.push(format!("render failed: {}", file.error));
    }
    if !file.reload_error.is_empty() {
        problems.push(format!("reload failed: {}", file.reload_error));
    }
    if !file.drift.is_empty() {
        problems.push(format!("drift: {}", file.drift));
    }
    if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join("; ")
    }
}

fn render_json(file: &RenderedFile) -> serde_json::Value {
    json!({
        "name": file.name,
        "dest": file.dest,
        "revision": file.revision,
        "rendered_unix_ms": file.rendered_unix_ms,
        "bytes": file.bytes,
        "renders": file.renders,
        "writes": file.writes,
        "error": file.error,
        "reloads": file.reloads,
        "reload_failures": file.reload_failures,
        "reload_error": file.reload_error,
        "drift_repairs": file.drift_repairs,
        "drift": file.drift,
    })
}

type Row = (
    String,
    etcd_client::StatusResponse,
    Vec<RenderedFile>,
    PluginsResponse,
);

fn print_renders(format: Format, rows: &[Row]) {
    let lines: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|(endpoint, _, files, _)| {
            files.iter().map(move |file| {
                vec![
                    endpoint.clone(),
                    file.dest.clone(),
                    file.revision.to_string(),
                    if file.rendered_unix_ms > 0 {
                        format_time(file.rendered_unix_ms)
                    } else {
                        "never".to_string()
                    },
                    format_size(file.bytes),
                    format!("{}/{}", file.reloads - file.reload_failures, file.reloads),
                    problem(file),
                ]
            })
        })
        .collect();
    if lines.is_empty() {
        return;
    }
    let headers = [
        "ENDPOINT",
        "RENDERED FILE",
        "REVISION",
        "AT",
        "SIZE",
        "RELOADS OK",
        "STATUS",
    ];
    if format == Format::Table {
        print_table(&headers, lines);
    } else {
        println!("rendered files:");
        for line in lines {
            println!("{}", line.join(", "));
        }
    }
}

fn print_plugins(format: Format, rows: &[Row]) {
    let plugins: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|(endpoint, _, _, answer)| {
            answer.plugins.iter().map(move |p| {
                let problem = match (p.reload_error.as_str(), p.last_failure.as_str()) {
                    ("", "") => "ok".to_string(),
                    ("", failure) => format!("last failure: {failure}"),
                    (reload, _) => format!("new file refused: {reload}"),
                };
                vec![
                    endpoint.clone(),
                    p.name.clone(),
                    p.kind.clone(),
                    p.digest.chars().take(12).collect(),
                    p.calls.to_string(),
                    p.refusals.to_string(),
                    p.failures.to_string(),
                    problem,
                ]
            })
        })
        .collect();
    let checks: Vec<Vec<String>> = rows
        .iter()
        .flat_map(|(endpoint, _, _, answer)| {
            answer.checks.iter().map(move |c| {
                vec![
                    endpoint.clone(),
                    c.name.clone(),
                    c.plugin.clone(),
                    c.status.clone(),
                    if c.since_unix_ms > 0 {
                        format_time(c.since_unix_ms)
                    } else {
                        "-".to_string()
                    },
                    c.output.clone(),
                ]
            })
        })
        .collect();
    let sections = [
        (
            "plugins:",
            &[
                "ENDPOINT", "PLUGIN", "KIND", "DIGEST", "CALLS", "REFUSED", "FAILED", "STATUS",
            ][..],
            plugins,
        ),
        (
            "checks:",
            &["ENDPOINT", "CHECK", "PLUGIN", "STATUS", "SINCE", "OUTPUT"][..],
            checks,
        ),
    ];
    for (title, headers, lines) in sections {
        if lines.is_empty() {
            continue;
        }
        if format == Format::Table {
            print_table(headers, lines);
        } else {
            println!("{title}");
            for line in lines {
                println!("{}", line.join(", "));
            }
        }
    }
}
