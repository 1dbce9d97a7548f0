//! `edgeconf trust`: write, sign, submit and inspect trust roots.
//!
//! A root is edited as a JSON file, offline: `init` writes version 1,
//! `add-key`, `revoke-key`, `set-threshold`, `set-on-expiry`,
//! `set-audience` and `remove-audience` write the next version (with no
//! signatures), `sign-root` adds a root key's signature, `push` submits
//! it, `show` prints the newest stored root (a starting point for the next
//! edit) and `status` what the agent has in force.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{print_json, Format};
use super::Client;
use crate::api::pb;
use crate::signing::keys::{self, parse_public_key};
use crate::signing::root::{root_key, Audience, Role, Root, SignedRoot, ROOT_PREFIX};
use crate::signing::{OnExpiry, Recipient};

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Write trust root version 1 (unsigned) to standard output.
    Init(InitArgs),
    /// Add a root key's signature to the root in FILE; prints the result.
    SignRoot {
        file: PathBuf,
        /// A root key (from `edgeconf keygen`).
        #[arg(long = "key-file", short = 'k')]
        key_file: PathBuf,
    },
    /// The next version of the root in FILE, trusting one more operator key
    /// (for every key, or under --prefix).
    AddKey {
        file: PathBuf,
        /// The operator's public key (`ed25519:...`).
        #[arg(long = "operator-key")]
        key: String,
        /// Trust it under this prefix only (created if new).
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        next: NextArgs,
    },
    /// The next version of the root in FILE, with an operator key removed
    /// everywhere (globally and from every prefix).
    RevokeKey {
        file: PathBuf,
        /// The operator's public key (`ed25519:...`).
        #[arg(long = "operator-key")]
        key: String,
        #[command(flatten)]
        next: NextArgs,
    },
    /// The next version of the root in FILE, with a prefix's threshold (or,
    /// with --root, the root keys' threshold) set.
    SetThreshold {
        file: PathBuf,
        #[arg(long, required_unless_present = "root")]
        prefix: Option<String>,
        #[arg(long)]
        root: bool,
        #[arg(long)]
        threshold: u32,
        #[command(flatten)]
        next: NextArgs,
    },
    /// The next version of the root in FILE, with what becomes of a
    /// prefix's values once they expire (`put --expires`).
    SetOnExpiry {
        file: PathBuf,
        #[arg(long)]
        prefix: String,
        /// `refuse`: no longer served or rendered; `keep`: served, and
        /// reported.
        #[arg(long = "on-expiry", value_parser = ["refuse", "keep"])]
        on_expiry: String,
        #[command(flatten)]
        next: NextArgs,
    },
    /// The next version of the root in FILE, with an audience (a group that
    /// secrets are encrypted to) set to these recipients.
    SetAudience {
        file: PathBuf,
        /// The audience's name (e.g. a label value: `eu`).
        #[arg(long)]
        name: String,
        /// An age recipient (`age1...`) of the group; repeat for several.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<String>,
        #[command(flatten)]
        next: NextArgs,
    },
    /// The next version of the root in FILE, without an audience.
    RemoveAudience {
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        next: NextArgs,
    },
    /// Submit the signed root in FILE to the cluster.
    Push { file: PathBuf },
    /// Print the newest trust root stored in the cluster (JSON).
    Show,
    /// What the agent has in force: root version, expiry, keys.
    Status,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The cluster id, in hex, as `edgeconf status` prints it.
    #[arg(long = "cluster-id")]
    cluster_id: String,
    /// A root key (`ed25519:...`); repeat for several.
    #[arg(long = "root-key", required = true)]
    root_keys: Vec<String>,
    /// How many root keys must sign each root.
    #[arg(long = "root-threshold", default_value_t = 1)]
    root_threshold: u32,
    /// An operator key trusted for every key; repeat for several.
    #[arg(long = "operator-key")]
    keys: Vec<String>,
    /// Refuse unsigned writes everywhere, not only under prefixes.
    #[arg(long)]
    locked: bool,
    /// How long the root stays valid.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    expires: Duration,
}

#[derive(Debug, Args)]
pub struct NextArgs {
    /// How long the new version stays valid.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    expires: Duration,
}

fn expiry(valid_for: Duration) -> u64 {
    crate::consensus::now_unix_secs().saturating_add(valid_for.as_secs())
}

fn public_key(text: &str) -> anyhow::Result<[u8; 32]> {
    parse_public_key(text).map_err(anyhow::Error::msg)
}

fn read_root(path: &Path) -> anyhow::Result<SignedRoot> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the trust root {}", path.display()))?;
    SignedRoot::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// The rule of `prefix` in `root`.
fn role_of<'a>(root: &'a mut Root, prefix: &str) -> anyhow::Result<&'a mut Role> {
    root.prefixes
        .iter_mut()
        .find(|r| r.prefix == prefix.as_bytes())
        .with_context(|| format!("the root has no prefix {prefix:?}: add a key under it first"))
}

/// `root` as its next version, unsigned, valid for `next.expires`.
fn next_version(mut root: Root, next: &NextArgs) -> anyhow::Result<()> {
    root.version += 1;
    root.expires_unix = expiry(next.expires);
    root.check_shape()?;
    println!("{}", SignedRoot::new(root).to_json());
    Ok(())
}

pub async fn run(client: &Client, format: Format, command: TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::Init(args) => {
            let cluster_id = u64::from_str_radix(args.cluster_id.trim_start_matches("0x"), 16)
                .ok()
                .filter(|id| *id != 0)
                .with_context(|| {
                    format!(
                        "--cluster-id {:?} is not the hex id `edgeconf status` prints",
                        args.cluster_id
                    )
                })?;
            let root = Root {
                cluster_id,
                version: 1,
                expires_unix: expiry(args.expires),
                root_keys: args
                    .root_keys
                    .iter()
                    .map(|k| public_key(k))
                    .collect::<Result<_, _>>()?,
                root_threshold: args.root_threshold,
                keys: args
                    .keys
                    .iter()
                    .map(|k| public_key(k))
                    .collect::<Result<_, _>>()?,
                prefixes: Vec::new(),
                allow_unsigned: !args.locked,
                audiences: Vec::new(),
            };
            root.check_shape()?;
            println!("{}", SignedRoot::new(root).to_json());
            Ok(())
        }
        TrustCommand::SignRoot { file, key_file } => {
            let mut signed = read_root(&file)?;
            signed.sign(&keys::read_signing_key(&key_file)?)?;
            println!("{}", signed.to_json());
            Ok(())
        }
        TrustCommand::AddKey {
            file,
            key,
            prefix,
            next,
        } => {
            let mut root = read_root(&file)?.root;
            let key = public_key(&key)?;
            match prefix {
                None if root.keys.contains(&key) => {
                    bail!("the key is already trusted for every key")
                }
                None => root.keys.push(key),
                Some(prefix) => match root
                    .prefixes
                    .iter_mut()
                    .find(|r| r.prefix == prefix.as_bytes())
                {
                    Some(role) if role.keys.contains(&key) => {
                        bail!("the key is already trusted under {prefix:?}")
                    }
                    Some(role) => role.keys.push(key),
                    None => root.prefixes.push(Role {
                        prefix: prefix.into_bytes(),
                        keys: vec![key],
                        threshold: 1,
                        on_expiry: OnExpiry::Refuse,
                    }),
                },
            }
            next_version(root, &next)
        }
        TrustCommand::RevokeKey { file, key, next } => {
            let mut root = read_root(&file)?.root;
            let key = public_key(&key)?;
            let before =
                root.keys.len() + root.prefixes.iter().map(|r| r.keys.len()).sum::<usize>();
            root.keys.retain(|k| *k != key);
            for role in &mut root.prefixes {
                role.keys.retain(|k| *k != key);
            }
            let after = root.keys.len() + root.prefixes.iter().map(|r| r.keys.len()).sum::<usize>();
            if before == after {
                bail!("the key is not an operator key of this root");
            }
            next_version(root, &next).context("revoking the key leaves a prefix with too few signers: add a key or lower its threshold first")
        }
        TrustCommand::SetThreshold {
            file,
            prefix,
            root: for_root,
            threshold,
            next,
        } => {
            let mut root = read_root(&file)?.root;
            if for_root {
                root.root_threshold = threshold;
            } else {
                role_of(&mut root, &prefix.unwrap_or_default())?.threshold = threshold;
            }
            next_version(root, &next)
        }
        TrustCommand::SetOnExpiry {
            file,
            prefix,
            on_expiry,
            next,
        } => {
            let mut root = read_root(&file)?.root;
            role_of(&mut root, &prefix)?.on_expiry = match on_expiry.as_str() {
                "keep" => OnExpiry::Keep,
                _ => OnExpiry::Refuse,
            };
            next_version(root, &next)
        }
        TrustCommand::SetAudience {
            file,
            name,
            recipients,
            next,
        } => {
            let mut root = read_root(&file)?.root;
            for recipient in &recipients {
                Recipient::parse(recipient)
                    .map_err(|problem| anyhow::anyhow!("--recipient: {problem}"))?;
            }
            let audience = Audience { name, recipients };
            match root.audiences.iter_mut().find(|a| a.name == audience.name) {
                Some(existing) => *existing = audience,
                None => root.audiences.push(audience),
            }
            next_version(root, &next)
        }
        TrustCommand::RemoveAudience { file, name, next } => {
            let mut root = read_root(&file)?.root;
            let before = root.audiences.len();
            root.audiences.retain(|a| a.name != name);
            if root.audiences.len() == before {
                bail!("the root has no audience {name:?}");
            }
            next_version(root, &next)
        }
        TrustCommand::Push { file } => {
            let signed = read_root(&file)?;
            let mut etcd = client.etcd().await?;
            let key = root_key(signed.root.version);
            let resp = client
                .request(etcd.put(key, signed.to_stored(), None))
                .await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            match format {
                Format::Json => print_json(&json!({
                    "version": signed.root.version,
                    "revision": revision,
                })),
                _ => println!(
                    "trust root version {} stored (revision {revision})",
                    signed.root.version
                ),
            }
            Ok(())
        }
        TrustCommand::Show => {
            let mut etcd = client.etcd().await?;
            let options = etcd_client::GetOptions::new()
                .with_prefix()
                .with_sort(
                    etcd_client::SortTarget::Key,
                    etcd_client::SortOrder::Descend,
                )
                .with_limit(1);
            let resp = client.request(etcd.get(ROOT_PREFIX, Some(options))).await?;
            let Some(kv) = resp.kvs().first() else {
                bail!("the cluster holds no trust root yet: write one with `edgeconf trust init`, sign it, and `edgeconf trust push` it");
            };
            println!("{}", SignedRoot::from_stored(kv.value())?.to_json());
            Ok(())
        }
        TrustCommand::Status => {
            let mut edgeconf = client.edgeconf().await?;
            let keyring = client
                .request(edgeconf.keyring(pb::KeyringRequest {}))
                .await?
                .into_inner();
            status(format, &keyring);
            Ok(())
        }
    }
}

fn status(format: Format, keyring: &pb::KeyringResponse) {
    match format {
        Format::Json => print_json(&json!({
            "root_version": keyring.root_version,
            "root_expires_unix": keyring.root_expires_unix,
            "root_expired": keyring.root_expired,
            "pinned_root_keys": keyring.pinned_root_keys,
            "trusted_keys": keyring.trusted_keys,
            "prefixes": keyring.prefixes.iter().map(|p| json!({"prefix": p.prefix, "keys": p.keys})).collect::<Vec<_>>(),
            "allow_unsigned": keyring.allow_unsigned,
            "audiences": keyring.audiences,
        })),
        _ => {
            if keyring.root_version == 0 {
                println!(
                    "no trust root in force: the agent's [trust] policy applies ({} root keys pinned)",
                    keyring.pinned_root_keys
                );
            } else {
                let expired = if keyring.root_expired {
                    ", EXPIRED"
                } else {
                    ""
                };
                println!(
                    "trust root version {} in force, expires at {} (Unix seconds){expired}",
                    keyring.root_version, keyring.root_expires_unix
                );
            }
            println!(
                "operator keys for every key: {}",
                keyring.trusted_keys.join(", ")
            );
            for prefix in &keyring.prefixes {
                println!("  {:?}: {}", prefix.prefix, prefix.keys.join(", "));
            }
            println!(
                "unsigned writes outside the prefixes: {}",
                if keyring.allow_unsigned {
                    "allowed"
                } else {
                    "refused"
                }
            );
            if !keyring.audiences.is_empty() {
                println!(
                    "audiences this agent decrypts: {}",
                    keyring.audiences.join(", ")
                );
            }
        }
    }
}
