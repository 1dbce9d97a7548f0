//! Key commands: put, get, del, history, rollback, compact.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::json;

use super::output::{
    format_size, format_time, header_json, kv_json, lossy, print_json, print_table, Format,
};
use super::signing::{self, signature_json, signature_text, SignOptions};
use super::Client;
use crate::api::pb;
use crate::signing::Op;

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key (not with --signed, whose change names its key).
    #[arg(required_unless_present = "signed")]
    pub key: Option<String>,
    /// The value; read from --file or standard input when left out.
    pub value: Option<String>,
    /// Read the value from this file.
    #[arg(long, conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// Sign the change with this operator key (from `edgeconf keygen`).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Submit a change signed earlier with `edgeconf sign`.
    #[arg(long, conflicts_with_all = ["key", "value", "file", "sign_key", "lease", "encrypt"])]
    pub signed: Option<PathBuf>,
    #[command(flatten)]
    pub sign_options: SignOptions,
    /// Attach the key to this lease (hexadecimal id).
    #[arg(long)]
    pub lease: Option<String>,
    /// Print the previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Write even if the key is under a rollout, which is aborted first.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// Read keys in [KEY, RANGE_END).
    pub range_end: Option<String>,
    /// Read every key starting with KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub prefix: bool,
    /// Read every key >= KEY.
    #[arg(long, conflicts_with_all = ["range_end", "prefix"])]
    pub from_key: bool,
    /// Read at this revision (0: the current one).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// At most this many keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    #[arg(long)]
    pub keys_only: bool,
    #[arg(long)]
    pub count_only: bool,
    #[arg(long)]
    pub print_value_only: bool,
    #[arg(long, value_enum, ignore_case = true)]
    pub order: Option<Order>,
    #[arg(long, value_enum, ignore_case = true)]
    pub sort_by: Option<SortBy>,
    /// Serializable read: answered by the agent asked, without a round of
    /// consensus (the same as linearizable on a single agent).
    #[arg(long, value_parser = ["l", "s"], default_value = "l")]
    pub consistency: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Order {
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum SortBy {
    Key,
    Version,
    Create,
    Modify,
    Value,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    /// Delete keys in [KEY, RANGE_END).
    pub range_end: Option<String>,
    #[arg(long, conflicts_with = "range_end")]
    pub prefix: bool,
    #[arg(long, conflicts_with_all = ["range_end", "prefix"])]
    pub from_key: bool,
    /// Print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
    /// Sign the delete (of KEY alone) with this operator key.
    #[arg(long, conflicts_with_all = ["range_end", "prefix", "from_key", "prev_kv"])]
    pub sign_key: Option<PathBuf>,
    /// The sequence to sign (see `edgeconf sign --help`).
    #[arg(long, requires = "sign_key")]
    pub seq: Option<u64>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub key: String,
    /// Show each revision's value too.
    #[arg(long)]
    pub values: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub key: String,
    /// The revision whose value to restore.
    #[arg(long = "to-rev")]
    pub to_rev: i64,
    /// Sign the restored value with this operator key (needed for signed
    /// keys: a rollback is a new signed write).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// The sequence to sign (see `edgeconf sign --help`).
    #[arg(long, requires = "sign_key")]
    pub seq: Option<u64>,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Discard history below this revision.
    pub revision: i64,
}

fn print_signed_write(
    format: Format,
    key: &str,
    resp: &pb::SignedWriteResponse,
) -> anyhow::Result<()> {
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    match format {
        Format::Json => print_json(&json!({
            "key": key,
            "revision": revision,
            "sequence": resp.sequence,
            "deleted": resp.deleted,
        })),
        Format::Simple | Format::Table => println!("OK"),
    }
    Ok(())
}

pub fn parse_lease_id(text: &str) -> anyhow::Result<i64> {
    i64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|_| {
        anyhow!("invalid lease ID {text:?}: expected the hexadecimal id printed by `edgeconf lease grant`")
    })
}

/// The value from the command line, a file, or standard input.
pub(super) fn read_value(value: Option<&str>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(value) = value {
        return Ok(value.as_bytes().to_vec());
    }
    if let Some(path) = file {
        return std::fs::read(path)
            .with_context(|| format!("cannot read the value from {}", path.display()));
    }
    let mut value = Vec::new();
    std::io::stdin()
        .read_to_end(&mut value)
        .context("cannot read the value from standard input")?;
    Ok(value)
}

/// `put --force`: aborts the rollout under way on `key`, if any.
async fn force(client: &Client, key: &str) -> anyhow::Result<()> {
    let reason = "overridden by a forced write (`edgeconf put --force`)";
    for id in super::rollout::abort_on_key(client, key, reason).await? {
        eprintln!("aborted rollout {id} of {key:?}");
    }
    Ok(())
}

pub async fn put(client: &Client, format: Format, args: PutArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.signed {
        let change = signing::read_change_file(path)?;
        if args.force {
            force(client, &lossy(&change.key)).await?;
        }
        let resp = signing::submit(client, &change, false).await?;
        return print_signed_write(format, &lossy(&change.key), &resp);
    }
    let key = args.key.clone().unwrap_or_default();
    let value = read_value(args.value.as_deref(), args.file.as_deref())?;
    if args.force {
        force(client, &key).await?;
    }
    if let Some(key_file) = &args.sign_key {
        if args.lease.is_some() || args.prev_kv {
            bail!("--lease and --prev-kv do not go with --sign-key: signed values are not bound to leases");
        }
        let resp =
            signing::sign_and_write(client, key_file, &key, Op::Put, value, &args.sign_options)
                .await?;
        return print_signed_write(format, &key, &resp);
    }
    if args.sign_options.encrypt || args.sign_options.seq.is_some() {
        bail!(
            "--encrypt and --seq need --sign-key: secrets and sequences belong to signed changes"
        );
    }
    let mut options = PutOptions::new();
    if let Some(lease) = &args.lease {
        options = options.with_lease(parse_lease_id(lease)?);
    }
    if args.prev_kv {
        options = options.with_prev_key();
    }
    let mut etcd = client.etcd().await?;
    let resp = client.request(etcd.put(key, value, Some(options))).await?;
    match format {
        Format::Json => print_json(&json!({
            "header": header_json(resp.header()),
            "prev_kv": resp.prev_key().map(kv_json),
        })),
        Format::Simple | Format::Table => {
            println!("OK");
            if let Some(prev) = resp.prev_key() {
                println!("{}\n{}", lossy(prev.key()), lossy(prev.value()));
            }
        }
    }
    Ok(())
}

pub async fn get(client: &Client, format: Format, args: GetArgs) -> anyhow::Result<()> {
    let mut options = GetOptions::new()
        .with_revision(args.rev)
        .with_limit(args.limit);
    if args.prefix {
        options = options.with_prefix();
    } else if args.from_key {
        options = options.with_from_key();
    } else if let Some(end) = &args.range_end {
        options = options.with_range(end.as_bytes());
    }
    if args.keys_only {
        options = options.with_keys_only();
    }
    if args.count_only {
        options = options.with_count_only();
    }
    if args.consistency == "s" {
        options = options.with_serializable();
    }
    if args.order.is_some() || args.sort_by.is_some() {
        let target = match args.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        };
        let order = match args.order.unwrap_or(Order::Ascend) {
            Order::Ascend => SortOrder::Ascend,
            Order::Descend => SortOrder::Descend,
        };
        options = options.with_sort(target, order);
    }
    let mut etcd = client.etcd().await?;
    let resp = client
        .request(etcd.get(args.key.as_str(), Some(options)))
        .await?;
    // Who signed what, when values are shown.
    let signatures = if args.keys_only || args.count_only || resp.kvs().is_empty() {
        Default::default()
    } else {
        let range_end = if args.prefix {
            Some(crate::store::prefix_end(args.key.as_bytes()).unwrap_or(vec![0]))
        } else if args.from_key {
            Some(vec![0])
        } else {
            args.range_end.as_ref().map(|end| end.clone().into_bytes())
        };
        let revision = resp.header().map_or(args.rev, |h| {
            if args.rev == 0 {
                h.revision()
            } else {
                args.rev
            }
        });
        signing::inspect(
            client,
            &args.key,
            range_end,
            revision,
            args.consistency == "s",
        )
        .await?
    };
    let signature = |kv: &etcd_client::KeyValue| {
        signatures
            .get(kv.key())
            .and_then(|inspected| inspected.signature.clone())
            .filter(|s| s.signed)
    };
    match format {
        Format::Json => print_json(&json!({
            "header": header_json(resp.header()),
            "kvs": resp.kvs().iter().map(|kv| {
                let mut value = kv_json(kv);
                if let Some(s) = signature(kv) {
                    value["signature"] = signature_json(Some(&s));
                }
                value
            }).collect::<Vec<_>>(),
            "more": resp.more(),
            "count": resp.count(),
        })),
        Format::Table => print_table(
            &[
                "KEY",
                "VALUE",
                "CREATE REV",
                "MOD REV",
                "VERSION",
                "LEASE",
                "SIGNATURE",
            ],
            resp.kvs().iter().map(|kv| {
                vec![
                    lossy(kv.key()),
                    lossy(kv.value()),
                    kv.create_revision().to_string(),
                    kv.mod_revision().to_string(),
                    kv.version().to_string(),
                    lease_text(kv.lease()),
                    signature(kv).map_or_else(String::new, |s| signature_text(Some(&s))),
                ]
            }),
        ),
        Format::Simple if args.count_only => println!("{}", resp.count()),
        Format::Simple => {
            for kv in resp.kvs() {
                if !args.print_value_only {
                    println!("{}", lossy(kv.key()));
                }
                if !args.keys_only {
                    println!("{}", lossy(kv.value()));
                }
                // etcdctl prints key and value lines only; a signed value
                // gets one more, unless only values were asked for.
                if let Some(s) = signature(kv).filter(|_| !args.print_value_only) {
                    println!("# {}", signature_text(Some(&s)));
                }
            }
        }
    }
    Ok(())
}

fn lease_text(lease: i64) -> String {
    if lease == 0 {
        String::new()
    } else {
        format!("{lease:x}")
    }
}

pub async fn del(client: &Client, format: Format, args: DelArgs) -> anyhow::Result<()> {
    if let Some(key_file) = &args.sign_key {
        let options = SignOptions {
            seq: args.seq,
            ..Default::default()
        };
        let resp = signing::sign_and_write(
            client,
            key_file,
            &args.key,
            Op::Delete,
            Vec::new(),
            &options,
        )
        .await?;
        match format {
            Format::Json => print_json(&json!({
                "key": args.key,
                "deleted": resp.deleted,
                "sequence": resp.sequence,
                "revision": resp.header.as_ref().map_or(0, |h| h.revision),
            })),
            Format::Simple | Format::Table => println!("{}", resp.deleted),
        }
        return Ok(());
    }
    let mut options = DeleteOptions::new();
    if args.prefix {
        options = options.with_prefix();
    } else if args.from_key {
        options = options.with_from_key();
    } else if let Some(end) = &args.range_end {
        options = options.with_range(end.as_bytes());
    }
    if args.prev_kv {
        options = options.with_prev_key();
    }
    let mut etcd = client.etcd().await?;
    let resp = client.request(etcd.delete(args.key, Some(options))).await?;
    match format {
        Format::Json => print_json(&json!({
            "header": header_json(resp.header()),
            "deleted": resp.deleted(),
            "prev_kvs": resp.prev_kvs().iter().map(kv_json).collect::<Vec<_>>(),
        })),
        Format::Simple | Format::Table => {
            println!("{}", resp.deleted());
            for kv in resp.prev_kvs() {
                println!("{}\n{}", lossy(kv.key()), lossy(kv.value()));
            }
        }
    }
    Ok(())
}

pub async fn history(client: &Client, format: Format, args: HistoryArgs) -> anyhow::Result<()> {
    let mut edgeconf = client.edgeconf().await?;
    let request = pb::HistoryRequest {
        key: args.key.clone().into_bytes(),
        with_values: args.values || format == Format::Json,
    };
    let resp = client
        .request(edgeconf.history(request))
        .await?
        .into_inner();
    if resp.revisions.is_empty() {
        bail!(
            "key {:?} has no retained history (never written, or compacted away below revision {})",
            args.key,
            resp.compact_revision
        );
    }
    match format {
        Format::Json => print_json(&json!({
            "key": args.key,
            "compact_revision": resp.compact_revision,
            "revisions": resp.revisions.iter().map(|r| json!({
                "revision": r.revision,
                "version": r.version,
                "create_revision": r.create_revision,
                "lease": r.lease,
                "deleted": r.deleted,
                "time": format_time(r.time_unix_ms),
                "size": r.value_size,
                "value": super::output::base64(&r.value),
                "signature": signature_json(r.signature.as_ref()),
            })).collect::<Vec<_>>(),
        })),
        Format::Table | Format::Simple => {
            // The signature column only where something is signed (or should be).
            let signatures = resp.revisions.iter().any(|r| {
                r.signature
                    .as_ref()
                    .is_some_and(|s| s.signed || !s.problem.is_empty())
            });
            let mut headers = vec!["REVISION", "VERSION", "TIME", "SIZE", "EVENT"];
            if signatures {
                headers.push("SIGNATURE");
            }
            if args.values {
                headers.push("VALUE");
            }
            let rows = resp.revisions.iter().map(|r| {
                let mut row = vec![
                    r.revision.to_string(),
                    r.version.to_string(),
                    format_time(r.time_unix_ms),
                    format_size(r.value_size),
                    if r.deleted { "DELETE" } else { "PUT" }.to_string(),
                ];
                if signatures {
                    row.push(signature_text(r.signature.as_ref()));
                }
                if args.values {
                    row.push(lossy(&r.value));
                }
                row
            });
            if format == Format::Table {
                print_table(&headers, rows);
            } else {
                println!("{}", headers.join("\t"));
                for row in rows {
                    println!("{}", row.join("\t"));
                }
            }
        }
    }
    Ok(())
}

pub async fn rollback(client: &Client, format: Format, args: RollbackArgs) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    let old = client
        .request(etcd.get(
            args.key.as_str(),
            Some(GetOptions::new().with_revision(args.to_rev)),
        ))
        .await
        .with_context(|| format!("cannot read {:?} at revision {}", args.key, args.to_rev))?;
    let Some(old) = old.kvs().first() else {
        bail!(
            "key {:?} did not exist at revision {}: pick a revision where it had a value (see `edgeconf history {}`)",
            args.key,
            args.to_rev,
            args.key
        );
    };
    let value = old.value().to_vec();
    if let Some(key_file) = &args.sign_key {
        return signed_rollback(client, format, &args, key_file, value).await;
    }
    let current = client.request(etcd.get(args.key.as_str(), None)).await?;
    let current_mod = current.kvs().first().map_or(0, |kv| kv.mod_revision());
    // Write only if nobody changed the key meanwhile.
    let txn = Txn::new()
        .when([Compare::mod_revision(
            args.key.as_str(),
            CompareOp::Equal,
            current_mod,
        )])
        .and_then([TxnOp::put(args.key.as_str(), value, None)]);
    let resp = client.request(etcd.txn(txn)).await?;
    if !resp.succeeded() {
        bail!(
            "key {:?} changed while rolling back; nothing was written, try again",
            args.key
        );
    }
    let revision = resp.header().map_or(0, |h| h.revision());
    match format {
        Format::Json => print_json(&json!({
            "key": args.key,
            "restored_revision": args.to_rev,
            "revision": revision,
        })),
        Format::Simple | Format::Table => println!(
            "rolled back {} to its value at revision {} (new revision {revision})",
            args.key, args.to_rev
        ),
    }
    Ok(())
}

/// A rollback of a signed key: the old value, signed again with a new
/// sequence (a secret stays a secret: it is decrypted nowhere, the same
/// ciphertext is signed anew).
async fn signed_rollback(
    client: &Client,
    format: Format,
    args: &RollbackArgs,
    key_file: &Path,
    value: Vec<u8>,
) -> anyhow::Result<()> {
    let old = signing::inspect(client, &args.key, None, args.to_rev, false).await?;
    let was_secret = old
        .get(args.key.as_bytes())
        .and_then(|k| k.signature.as_ref())
        .is_some_and(|s| s.encrypted);
    let latest = signing::inspect(client, &args.key, None, 0, false)
        .await?
        .get(args.key.as_bytes())
        .map_or(0, |k| k.latest_sequence);
    // Just above the latest: if anyone writes the key meanwhile, the
    // rollback is refused as stale instead of overwriting their change.
    let sequence = args.seq.unwrap_or(latest.saturating_add(1));
    let signing_key = crate::signing::keys::read_signing_key(key_file)?;
    let binding = signing::cluster_binding(client).await?;
    let change = crate::signing::SignedChange::sign(
        &signing_key,
        args.key.as_bytes().to_vec(),
        Op::Put,
        sequence,
        was_secret,
        value,
        binding,
    )?;
    let resp = signing::submit(client, &change, false).await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    match format {
        Format::Json => print_json(&json!({
            "key": args.key,
            "restored_revision": args.to_rev,
            "revision": revision,
            "sequence": sequence,
        })),
        Format::Simple | Format::Table => println!(
            "rolled back {} to its value at revision {} (new revision {revision}, signed, sequence {sequence})",
            args.key, args.to_rev
        ),
    }
    Ok(())
}

pub async fn compact(client: &Client, format: Format, args: CompactArgs) -> anyhow::Result<()> {
    let mut etcd = client.etcd().await?;
    let resp = client.request(etcd.compact(args.revision, None)).await?;
    match format {
        Format::Json => print_json(&json!({
            "header": header_json(resp.header()),
            "compacted_revision": args.revision,
        })),
        Format::Simple | Format::Table => println!("compacted revision {}", args.revision),
    }
    Ok(())
}
