//! Signed config from the command line: keys, offline signing, signed puts
//! and deletes, and checking what is stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;

use super::output::{lossy, print_json, print_table, Format};
use super::Client;
use crate::api::pb;
use crate::signing::root::{root_key, SignedRoot};
use crate::signing::{keys, secrets, Binding, Op, Recipient, SignedChange};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (created with mode 0600, never
    /// overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Make an age identity for secrets instead of an operator signing key;
    /// prints its recipient (age1...) for [secrets] recipients.
    #[arg(long)]
    pub secret: bool,
}

/// How to sign a change: shared by `sign`, `put`, `del` and `rollback`.
#[derive(Debug, Args, Default)]
pub struct SignOptions {
    /// The sequence to sign; defaults to the current time in microseconds,
    /// above every earlier change made the same way.
    #[arg(long)]
    pub seq: Option<u64>,
    /// Encrypt the value to the fleet's recipients (a secret).
    #[arg(long)]
    pub encrypt: bool,
    /// A recipient (age1...) to encrypt to; repeat for several. Defaults to
    /// the recipients the agent has in [secrets] (not for `sign`).
    #[arg(long = "recipient")]
    pub recipients: Vec<String>,
    /// Encrypt to an audience of the trust root (a group of agents: only
    /// they decrypt it); repeat for several. Implies --encrypt.
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// The change expires this long after signing (e.g. `30d`); then its
    /// prefix's `on_expiry` applies (refused by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub expires: Option<std::time::Duration>,
}

/// What a change carries beside its key, value and sequence.
#[derive(Debug, Default)]
pub struct Terms {
    /// Encrypt the value to these recipients (a secret).
    pub recipients: Option<Vec<Recipient>>,
    /// Unix seconds from which the change is expired.
    pub expires_unix: Option<u64>,
}

impl SignOptions {
    fn expires_unix(&self) -> Option<u64> {
        self.expires
            .map(|valid_for| crate::consensus::now_unix_secs().saturating_add(valid_for.as_secs()))
    }
}

/// The recipients of `names`, audiences of `root`.
fn audience_recipients(root: &SignedRoot, names: &[String]) -> anyhow::Result<Vec<Recipient>> {
    let mut texts = Vec::new();
    for name in names {
        let Some(audience) = root.root.audience(name) else {
            let known: Vec<&str> = root
                .root
                .audiences
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            bail!(
                "--audience {name:?}: trust root version {} has no such audience (it has: {}); add one with `edgeconf trust set-audience`",
                root.root.version,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            );
        };
        texts.extend(audience.recipients.iter().cloned());
    }
    texts.sort();
    texts.dedup();
    parse_recipients(&texts)
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The key to sign a change of (not with --add).
    #[arg(required_unless_present = "add")]
    pub key: Option<String>,
    /// The value; read from --file or standard input when left out.
    pub value: Option<String>,
    #[arg(long, conflicts_with = "value")]
    pub file: Option<PathBuf>,
    /// The operator key to sign with (from `edgeconf keygen`).
    #[arg(long = "key-file", alias = "sign-key", short = 'k')]
    pub key_file: PathBuf,
    /// The cluster the change is for, in hex as `edgeconf status` prints
    /// it: the signature is refused by every other cluster.
    #[arg(long = "cluster-id", required_unless_present = "add")]
    pub cluster_id: Option<String>,
    /// The trust root version in force (`edgeconf trust status`; 0 without
    /// a trust root).
    #[arg(long = "root-version", default_value_t = 0)]
    pub root_version: u64,
    /// Sign a delete of KEY instead of a put.
    #[arg(long, conflicts_with_all = ["value", "file", "encrypt"])]
    pub delete: bool,
    /// The trust root (JSON, from `edgeconf trust show`) whose audiences
    /// --audience names.
    #[arg(long, value_name = "FILE")]
    pub root: Option<PathBuf>,
    /// Add this key's signature to the change in FILE (written by `edgeconf
    /// sign`) and print the result: for prefixes that need several signers.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "value", "file", "delete", "cluster_id", "root_version", "seq", "encrypt", "audiences", "expires", "root"])]
    pub add: Option<PathBuf>,
    #[command(flatten)]
    pub options: SignOptions,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub key: String,
    /// Check every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Check the value at this revision (0: the current one).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Serializable read: the agent asked answers from its own store.
    #[arg(long, value_parser = ["l", "s"], default_value = "l")]
    pub consistency: String,
}

pub fn keygen(format: Format, args: KeygenArgs) -> anyhow::Result<()> {
    let public = if args.secret {
        secrets::generate_identity(&args.out)?.to_string()
    } else {
        let key = keys::generate_signing_key()?;
        keys::write_signing_key(&args.out, &key)?;
        keys::format_public_key(key.verifying_key().as_bytes())
    };
    match format {
        Format::Json => print_json(&json!({ "private_key_file": args.out, "public_key": public })),
        Format::Simple | Format::Table => {
            println!("{public}");
            let (what, section) = if args.secret {
                ("recipient", "[secrets] recipients")
            } else {
                ("public key", "[trust] keys (or a [[trust.prefix]])")
            };
            eprintln!(
                "wrote {} (keep it private); add the {what} above to {section} of every agent",
                args.out.display()
            );
        }
    }
    Ok(())
}

/// A sequence above every earlier default one: the time in microseconds.
pub fn default_sequence(floor: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    now.max(floor.saturating_add(1))
}

fn parse_recipients(texts: &[String]) -> anyhow::Result<Vec<Recipient>> {
    texts
        .iter()
        .map(|text| Recipient::parse(text).map_err(anyhow::Error::msg))
        .collect()
}

/// Signs a change for the cluster in `binding` with the key in `key_file`;
/// encrypts first if asked.
pub fn make_change(
    key_file: &Path,
    binding: Binding,
    key: &str,
    op: Op,
    value: Vec<u8>,
    sequence: u64,
    terms: &Terms,
) -> anyhow::Result<SignedChange> {
    let signing_key = keys::read_signing_key(key_file)?;
    let (encrypted, value) = match &terms.recipients {
        Some(recipients) => (true, secrets::encrypt(recipients, &value)?),
        None => (false, value),
    };
    let mut change = SignedChange::unsigned(
        key.as_bytes().to_vec(),
        op,
        sequence,
        encrypted,
        value,
        binding,
    );
    change.expires_unix = terms.expires_unix;
    change.add_signature(&signing_key)?;
    Ok(change)
}

/// What changes signed against a running cluster are bound to: the cluster
/// id its response headers carry and the trust root it has in force.
pub async fn cluster_binding(client: &Client) -> anyhow::Result<Binding> {
    let mut etcd = client.etcd().await?;
    let status = client.request(etcd.status()).await?;
    let cluster_id = status
        .header()
        .map(|header| header.cluster_id())
        .filter(|id| *id != 0)
        .context("the agent's status carries no cluster id to bind the signature to")?;
    let mut edgeconf = client.edgeconf().await?;
    let keyring = client
        .request(edgeconf.keyring(pb::KeyringRequest {}))
        .await?
        .into_inner();
    Ok(Binding {
        cluster_id,
        root_version: keyring.root_version,
    })
}

/// Parses `--cluster-id`: hex, as response headers and `edgeconf status`
/// print it.
fn parse_cluster_id(text: &str) -> anyhow::Result<u64> {
    let digits = text.trim_start_matches("0x");
    match u64::from_str_radix(digits, 16) {
        Ok(id) if id != 0 => Ok(id),
        _ => bail!("--cluster-id {text:?} is not a cluster id: expected the hex id `edgeconf status` prints (e.g. 8e9e05c52164694d)"),
    }
}

pub fn sign(args: SignArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.add {
        let mut change = read_change_file(path)?;
        change
            .verify_signature()
            .with_context(|| format!("{}: its signatures do not verify", path.display()))?;
        let signing_key = keys::read_signing_key(&args.key_file)?;
        change
            .add_signature(&signing_key)
            .with_context(|| format!("cannot add a signature to {}", path.display()))?;
        println!("{}", change.to_json());
        return Ok(());
    }
    let (Some(key), Some(cluster_id)) = (&args.key, &args.cluster_id) else {
        bail!("edgeconf sign needs KEY and --cluster-id (or --add FILE)");
    };
    let binding = Binding {
        cluster_id: parse_cluster_id(cluster_id)?,
        root_version: args.root_version,
    };
    let op = if args.delete { Op::Delete } else { Op::Put };
    let value = if args.delete {
        Vec::new()
    } else {
        super::kv::read_value(args.value.as_deref(), args.file.as_deref())?
    };
    let options = &args.options;
    let recipients = if !options.audiences.is_empty() {
        let Some(path) = &args.root else {
            bail!("--audience needs --root FILE when signing offline (the trust root from `edgeconf trust show`)");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trust root {}", path.display()))?;
        let root = SignedRoot::from_json(&text).with_context(|| format!("{}", path.display()))?;
        let mut recipients = audience_recipients(&root, &options.audiences)?;
        recipients.extend(parse_recipients(&options.recipients)?);
        Some(recipients)
    } else if options.encrypt {
        if options.recipients.is_empty() {
            bail!("--encrypt needs --recipient age1... (or --audience NAME --root FILE) when signing offline");
        }
        Some(parse_recipients(&options.recipients)?)
    } else {
        None
    };
    let terms = Terms {
        recipients,
        expires_unix: options.expires_unix(),
    };
    let sequence = options.seq.unwrap_or_else(|| default_sequence(0));
    let change = make_change(&args.key_file, binding, key, op, value, sequence, &terms)?;
    println!("{}", change.to_json());
    Ok(())
}

/// Reads a change written by `edgeconf sign`.
pub fn read_change_file(path: &Path) -> anyhow::Result<SignedChange> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signed change {}", path.display()))?;
    SignedChange::from_json(&text).with_context(|| {
        format!(
            "{} is not a signed change written by `edgeconf sign`",
            path.display()
        )
    })
}

/// Signs and submits a put or delete of `key` on the agent. The sequence
/// defaults to one above what the agent has stored.
pub async fn sign_and_write(
    client: &Client,
    key_file: &Path,
    key: &str,
    op: Op,
    value: Vec<u8>,
    options: &SignOptions,
) -> anyhow::Result<pb::SignedWriteResponse> {
    let recipients = if !options.audiences.is_empty() {
        let root = root_in_force(client).await?;
        let mut recipients = audience_recipients(&root, &options.audiences)?;
        recipients.extend(parse_recipients(&options.recipients)?);
        Some(recipients)
    } else if options.encrypt {
        let texts = if options.recipients.is_empty() {
            let mut edgeconf = client.edgeconf().await?;
            let keyring = client
                .request(edgeconf.keyring(pb::KeyringRequest {}))
                .await?
                .into_inner();
            if keyring.recipients.is_empty() {
                bail!("--encrypt: the agent has no [secrets] recipients; pass --recipient age1...");
            }
            keyring.recipients
        } else {
            options.recipients.clone()
        };
        Some(parse_recipients(&texts)?)
    } else {
        None
    };
    let sequence = match options.seq {
        Some(sequence) => sequence,
        None => {
            let inspected = inspect(client, key, None, 0, false).await?;
            default_sequence(
                inspected
                    .get(key.as_bytes())
                    .map_or(0, |k| k.latest_sequence),
            )
        }
    };
    let binding = cluster_binding(client).await?;
    let terms = Terms {
        recipients,
        expires_unix: options.expires_unix(),
    };
    let change = make_change(key_file, binding, key, op, value, sequence, &terms)?;
    submit(client, &change, false).await
}

/// The trust root the agent has in force (it walked and verified the chain
/// to it), read from the store.
async fn root_in_force(client: &Client) -> anyhow::Result<SignedRoot> {
    let mut edgeconf = client.edgeconf().await?;
    let keyring = client
        .request(edgeconf.keyring(pb::KeyringRequest {}))
        .await?
        .into_inner();
    if keyring.root_version == 0 {
        bail!("--audience: the agent has no trust root in force; audiences live in the trust root (`edgeconf trust set-audience`)");
    }
    let mut etcd = client.etcd().await?;
    let resp = client
        .request(etcd.get(root_key(keyring.root_version), None))
        .await?;
    let kv = resp.kvs().first().with_context(|| {
        format!(
            "trust root version {} is not in the store",
            keyring.root_version
        )
    })?;
    Ok(SignedRoot::from_stored(kv.value())?)
}

pub async fn submit(
    client: &Client,
    change: &SignedChange,
    prev_kv: bool,
) -> anyhow::Result<pb::SignedWriteResponse> {
    let mut edgeconf = client.edgeconf().await?;
    let request = pb::SignedWriteRequest {
        change: change.to_stored(),
        prev_kv,
    };
    Ok(client
        .request(edgeconf.signed_write(request))
        .await?
        .into_inner())
}

/// How the keys in `[key, range_end)` (or `key` alone) are signed.
pub async fn inspect(
    client: &Client,
    key: &str,
    range_end: Option<Vec<u8>>,
    revision: i64,
    serializable: bool,
) -> anyhow::Result<HashMap<Vec<u8>, pb::InspectedKey>> {
    inspect_with(client, key, range_end, revision, serializable, false).await
}

async fn inspect_with(
    client: &Client,
    key: &str,
    range_end: Option<Vec<u8>>,
    revision: i64,
    serializable: bool,
    check_decrypt: bool,
) -> anyhow::Result<HashMap<Vec<u8>, pb::InspectedKey>> {
    let mut edgeconf = client.edgeconf().await?;
    let request = pb::InspectRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.unwrap_or_default(),
        revision,
        serializable,
        check_decrypt,
    };
    let resp = client
        .request(edgeconf.inspect(request))
        .await?
        .into_inner();
    Ok(resp
        .keys
        .into_iter()
        .map(|inspected| (inspected.key.clone(), inspected))
        .collect())
}

/// One line about a signature, for people.
pub fn signature_text(signature: Option<&pb::Signature>) -> String {
    let Some(signature) = signature else {
        return String::new();
    };
    if !signature.signed {
        return if signature.problem.is_empty() {
            String::new()
        } else {
            format!("unsigned: {}", signature.problem)
        };
    }
    let secret = match (signature.encrypted, signature.decryptable) {
        (false, _) => "",
        (true, true) => ", secret (this agent decrypts it)",
        (true, false) => ", secret",
    };
    let state = if signature.verified {
        "verified".to_string()
    } else {
        format!("NOT VERIFIED: {}", signature.problem)
    };
    let root = if !signature.bound {
        ", unbound (signed before binding)".to_string()
    } else if signature.root_version > 0 {
        format!(", under trust root {}", signature.root_version)
    } else {
        String::new()
    };
    let expiry = match (signature.expires_unix, signature.expired) {
        (0, _) => String::new(),
        (at, expired) => format!(
            ", {} {}",
            if expired { "EXPIRED at" } else { "expires" },
            format_unix(at)
        ),
    };
    format!(
        "signed by {} seq {}{root}{secret}{expiry}, {state}",
        signature.signer, signature.sequence
    )
}

/// `at` (Unix seconds) as RFC 3339, or as a number when no date can show it
/// (an agent's answer is not trusted to be in range).
fn format_unix(at: u64) -> String {
    if at > crate::signing::envelope::MAX_EXPIRES_UNIX {
        return format!("{at} (Unix seconds)");
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
        .to_string()
}

pub fn signature_json(signature: Option<&pb::Signature>) -> serde_json::Value {
    match signature {
        Some(s) if s.signed => json!({
            "signer": s.signer,
            "sequence": s.sequence,
            "encrypted": s.encrypted,
            "verified": s.verified,
            "problem": (!s.problem.is_empty()).then_some(&s.problem),
            "decryptable": s.encrypted.then_some(s.decryptable),
            "bound": s.bound,
            "root_version": s.root_version,
            "expires_unix": (s.expires_unix != 0).then_some(s.expires_unix),
            "expired": s.expired,
        }),
        Some(s) if !s.problem.is_empty() => json!({ "verified": false, "problem": s.problem }),
        _ => serde_json::Value::Null,
    }
}

/// `edgeconf verify`: re-checks stored values against the agent's trust
/// policy; fails when any does not check out.
pub async fn verify(client: &Client, format: Format, args: VerifyArgs) -> anyhow::Result<()> {
    let range_end = args
        .prefix
        .then(|| crate::store::prefix_end(args.key.as_bytes()).unwrap_or(vec![0]));
    let inspected = inspect_with(
        client,
        &args.key,
        range_end,
        args.rev,
        args.consistency == "s",
        true,
    )
    .await?;
    if inspected.is_empty() {
        bail!(
            "no key {:?} to verify{}",
            args.key,
            if args.prefix { " (with --prefix)" } else { "" }
        );
    }
    let mut keys: Vec<_> = inspected.into_values().collect();
    keys.sort_by(|a, b| a.key.cmp(&b.key));
    let failed = keys.iter().filter(|k| !passes(k)).count();
    match format {
        Format::Json => print_json(&json!({
            "keys": keys.iter().map(|k| json!({
                "key": lossy(&k.key),
                "mod_revision": k.mod_revision,
                "protected": k.protected,
                "ok": passes(k),
                "signature": signature_json(k.signature.as_ref()),
            })).collect::<Vec<_>>(),
            "failed": failed,
        })),
        Format::Table => print_table(
            &["KEY", "REVISION", "PROTECTED", "RESULT"],
            keys.iter().map(|k| {
                vec![
                    lossy(&k.key),
                    k.mod_revision.to_string(),
                    k.protected.to_string(),
                    signature_text(k.signature.as_ref()),
                ]
            }),
        ),
        Format::Simple => {
            for k in &keys {
                let text = signature_text(k.signature.as_ref());
                let text = if text.is_empty() {
                    "unsigned (allowed here)".to_string()
                } else {
                    text
                };
                println!("{}: {text}", lossy(&k.key));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} values do not verify", keys.len());
    }
    Ok(())
}

/// A value passes when it is signed and verifies, or is unsigned where
/// unsigned values are allowed.
fn passes(inspected: &pb::InspectedKey) -> bool {
    inspected.signature.as_ref().is_some_and(|s| {
        if s.signed {
            s.verified
        } else {
            s.problem.is_empty()
        }
    })
}
