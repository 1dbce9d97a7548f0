//! `edgeconf watch`: print events until interrupted, as etcdctl does; a
//! dropped connection is made again from the last revision seen.

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
    // The next revision to see: after a dropped connection the watch is
    // made again from it, so no event is lost or printed twice.
    let mut next = args.rev;
    let mut dropped: Option<std::time::Instant> = None;
    loop {
        let mut options = WatchOptions::new().with_start_revision(next);
        if args.prefix {
            options = options.with_prefix();
        } else if let Some(end) = &args.range_end {
            options = options.with_range(end.as_bytes());
        }
        if args.prev_kv {
            options = options.with_prev_key();
        }
        let opened = async {
            let mut etcd = client.etcd().await?;
            client
                .request(etcd.watch(args.key.clone(), Some(options)))
                .await
        }
        .await;
        let mut stream = match (opened, dropped) {
            (Ok(stream), _) => stream,
            (Err(err), None) => return Err(err),
            (Err(err), Some(_)) if is_permanent(&err) => return Err(err),
            (Err(_), Some(since)) => {
                // Keep trying, as etcdctl does; say so now and then.
                if since.elapsed().as_secs() % 10 == 0 {
                    eprintln!("watch: reconnecting (revision {next} onwards)...");
                }
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        if dropped.take().is_some() {
            eprintln!("watch: resumed from revision {next}");
        }
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) | Err(_) => {
                    eprintln!("watch: the connection dropped; resuming from revision {next}");
                    dropped = Some(std::time::Instant::now());
                    break;
                }
            };
            if response.canceled() {
                if response.compact_revision() > 0 {
                    bail!(
                        "watch canceled: revision {next} is compacted; the oldest revision you can watch from is {}",
                        response.compact_revision()
                    );
                }
                bail!("watch canceled: {}", response.cancel_reason());
            }
            if next == 0 {
                // Watching from now: a resumed watch starts after what the
                // first answer saw.
                next = response.header().map_or(0, |h| h.revision()) + 1;
            }
            if let Some(last) = response.events().last().and_then(|e| e.kv()) {
                next = next.max(last.mod_revision() + 1);
            }
            print_events(format, &response);
        }
    }
}

/// Errors no reconnecting mends: the caller may not watch, or asked for
/// something invalid.
fn is_permanent(err: &anyhow::Error) -> bool {
    let text = format!("{err:#}");
    [
        "permission denied",
        "user name is empty",
        "invalid auth token",
        "InvalidArgument",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// How long to wait before reconnecting a dropped watch.
const RECONNECT: std::time::Duration = std::time::Duration::from_millis(500);

fn print_events(format: Format, response: &etcd_client::WatchResponse) {
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
        return;
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
