//! `edgeconf status`: one line per endpoint, like `etcdctl endpoint status`.

use serde_json::json;

use super::output::{format_size, header_json, print_json, print_table, Format};
use super::Client;

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
            Ok(status) => rows.push((endpoint.clone(), status)),
            Err(err) => failures.push(err.to_string()),
        }
    }
    match format {
        Format::Json => print_json(&json!(rows
            .iter()
            .map(|(endpoint, s)| json!({
                "endpoint": endpoint,
                "header": header_json(s.header()),
                "version": s.version(),
                "db_size": s.db_size(),
                "leader": s.leader(),
                "raft_index": s.raft_index(),
                "raft_term": s.raft_term(),
            }))
            .collect::<Vec<_>>())),
        _ => {
            let lines = rows.iter().map(|(endpoint, s)| {
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
            ];
            if format == Format::Table {
                print_table(&headers, lines);
            } else {
                for line in lines {
                    println!("{}", line.join(", "));
                }
            }
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("{}", failures.join("; "));
    }
    Ok(())
}
