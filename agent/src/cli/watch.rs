//! `edgeconf watch`: print events until interrupted, as etcdctl does.

use anyhow::bail;
use clap::Args;
use etcd_client::{EventType, WatchOptions};
use serde_json::json;

use super::output::{header_json, kv_json, lossy, print_json, Format};
use super::Client;

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub key: String,
    /// Watch keys in [KEY, RANGE_END).
    pub range_end: Option<String>,
    /// Watch every key starting with KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub prefix: bool,
    /// Replay events from this revision first.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Print each key's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
}

pub async fn watch(client: &Client, format: Format, args: WatchArgs) -> anyhow::Result<()> {
    let mut options = WatchOptions::new().with_start_revision(args.rev);
    if args.prefix {
        options = options.with_prefix();
    } else if let Some(end) = &args.range_end {
        options = options.with_range(end.as_bytes());
    }
    if args.prev_kv {
        options = options.with_prev_key();
    }
    let mut etcd = client.etcd().await?;
    let mut stream = client.request(etcd.watch(args.key, Some(options))).await?;
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => bail!("the agent closed the watch stream"),
            Err(err) => return Err(client.describe(err)),
        };
        if response.canceled() {
            if response.compact_revision() > 0 {
                bail!(
                    "watch canceled: revision {} is compacted; the oldest revision you can watch from is {}",
                    args.rev,
                    response.compact_revision()
                );
            }
            bail!("watch canceled: {}", response.cancel_reason());
        }
        if format == Format::Json {
            if !response.events().is_empty() {
                print_json(&json!({
                    "header": header_json(response.header()),
                    "watch_id": response.watch_id(),
                    "events": response.events().iter().map(|e| json!({
                        "type": match e.event_type() { EventType::Put => "PUT", EventType::Delete => "DELETE" },
                        "kv": e.kv().map(kv_json),
                        "prev_kv": e.prev_kv().map(kv_json),
                    })).collect::<Vec<_>>(),
                }));
            }
            continue;
        }
        for event in response.events() {
            println!(
                "{}",
                match event.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                }
            );
            if let Some(prev) = event.prev_kv() {
                println!("{}\n{}", lossy(prev.key()), lossy(prev.value()));
            }
            if let Some(kv) = event.kv() {
                println!("{}", lossy(kv.key()));
                if event.event_type() == EventType::Put {
                    println!("{}", lossy(kv.value()));
                }
            }
        }
    }
}
