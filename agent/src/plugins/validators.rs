//! `[[validate]]`: validator plugins bound to key prefixes, asked about
//! every value written under them (on the agent that takes the write, and
//! again on the leader) and about every value before it is rendered.
//!
//! A validator that fails (timeout, memory, trap) refuses the value: a
//! check that could not run is not a pass.

use std::sync::Arc;

use super::host::{CallContext, KeyReader};
use super::{CallError, Plugins};
use crate::config::ValidateEntry;
use crate::signing::{Keyring, SignedChange};
use crate::store::{Command, TxnOp};

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("rejected by plugin {plugin}: {message}")]
    Refused {
        plugin: String,
        key: String,
        message: String,
    },
    #[error("plugin {plugin} failed on {key}, so the value is refused: the plugin {error}")]
    Failed {
        plugin: String,
        key: String,
        error: CallError,
    },
    #[error("{key}: the value cannot be validated: {problem}")]
    Unreadable { key: String, problem: String },
}

struct Binding {
    prefix: Vec<u8>,
    plugin: String,
    context: CallContext,
}

/// Every `[[validate]]` binding, in config order.
pub struct Validators {
    plugins: Arc<Plugins>,
    bindings: Vec<Binding>,
    /// Bounds the blocking threads the API edge spends on plugin calls.
    permits: Arc<tokio::sync::Semaphore>,
}

/// The `[[validate]]` bindings in force: a SIGHUP may replace them (see
/// `crate::config::reload`). Readers take the bindings of the moment; a
/// call under way finishes with the ones it started with.
#[derive(Default)]
pub struct ValidatorsCell(std::sync::RwLock<Option<Arc<Validators>>>);

impl ValidatorsCell {
    pub fn get(&self) -> Option<Arc<Validators>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, validators: Option<Arc<Validators>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = validators;
    }
}

/// Plugin calls the API runs at once; more wait.
const CONCURRENT_CALLS: usize = 64;

/// A value a command writes, as stored.
enum Written<'a> {
    Plain(&'a [u8]),
    Signed(&'a [u8]),
}

impl Validators {
    pub fn new(
        plugins: Arc<Plugins>,
        entries: &[ValidateEntry],
        keys: Option<Arc<dyn KeyReader>>,
    ) -> Validators {
        let bindings = entries
            .iter()
            .map(|entry| Binding {
                prefix: entry.prefix.clone(),
                plugin: entry.plugin.clone(),
                context: CallContext {
                    settings: Arc::new(entry.settings.clone()),
                    keys: keys.clone(),
                },
            })
            .collect();
        Validators {
            plugins,
            bindings,
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)),
        }
    }

    /// Whether any binding applies to `key`.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.bindings.iter().any(|b| key.starts_with(&b.prefix))
    }

    /// Runs every validator bound to a prefix of `key` on its plain value.
    pub fn validate(&self, key: &[u8], value: &[u8]) -> Result<(), Rejection> {
        let text = String::from_utf8_lossy(key);
        for binding in self.bindings.iter().filter(|b| key.starts_with(&b.prefix)) {
            match self
                .plugins
                .validate(&binding.plugin, &binding.context, &text, value)
            {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    tracing::info!(plugin = %binding.plugin, key = %text, %message, "a validator refused a value");
                    return Err(Rejection::Refused {
                        plugin: binding.plugin.clone(),
                        key: text.into_owned(),
                        message,
                    });
                }
                Err(error) => {
                    tracing::warn!(plugin = %binding.plugin, key = %text, %error, "a validator failed; the value is refused");
                    return Err(Rejection::Failed {
                        plugin: binding.plugin.clone(),
                        key: text.into_owned(),
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether `command` writes a key some binding covers.
    pub fn touches(&self, command: &Command) -> bool {
        writes(command).iter().any(|(key, _)| self.covers(key))
    }

    /// Validates every value `command` writes under a bound prefix. Signed
    /// values are validated as signed (the payload), secrets decrypted.
    pub fn check_command(&self, command: &Command, keyring: &Keyring) -> Result<(), Rejection> {
        for (key, written) in writes(command) {
            if !self.covers(key) {
                continue;
            }
            let unreadable = |problem: String| Rejection::Unreadable {
                key: String::from_utf8_lossy(key).into_owned(),
                problem,
            };
            match written {
                Written::Plain(value) => self.validate(key, value)?,
                Written::Signed(stored) => {
                    let change = SignedChange::from_stored(stored)
                        .map_err(|err| unreadable(err.to_string()))?
                        .ok_or_else(|| unreadable("a signed put without a signed change".into()))?;
                    let value = if change.encrypted {
                        keyring.identities.decrypt(&change.value).map_err(|err| {
                            unreadable(format!(
                                "it is a secret this agent cannot decrypt ({err}); give it an identity in [secrets]"
                            ))
                        })?
                    } else {
                        change.value
                    };
                    self.validate(key, &value)?;
                }
            }
        }
        Ok(())
    }

    /// [`Self::check_command`] on a blocking thread, for the async API.
    pub async fn check_command_async(
        self: &Arc<Self>,
        command: &Command,
        keyring: Arc<Keyring>,
    ) -> Result<(), Rejection> {
        if !self.touches(command) {
            return Ok(());
        }
        let permit = self.permits.clone().acquire_owned().await;
        let (validators, command) = (self.clone(), command.clone());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            validators.check_command(&command, &keyring)
        })
        .await
        .unwrap_or_else(|err| {
            Err(Rejection::Unreadable {
                key: String::new(),
                problem: format!("the validation task failed: {err}"),
            })
        })
    }
}

/// The keys a command writes, with their new values (`ignore_value` puts
/// keep their value and are not asked about).
fn writes(command: &Command) -> Vec<(&[u8], Written<'_>)> {
    let mut out = Vec::new();
    collect(command, &mut out);
    out
}

fn collect<'a>(command: &'a Command, out: &mut Vec<(&'a [u8], Written<'a>)>) {
    match command {
        Command::Put(put) if !put.ignore_value => out.push((&put.key, Written::Plain(&put.value))),
        Command::Txn(txn) => {
            for op in txn.success.iter().chain(&txn.failure) {
                if let TxnOp::Put(put) = op {
                    if !put.ignore_value {
                        out.push((&put.key, Written::Plain(&put.value)));
                    }
                }
            }
        }
        Command::SignedPut { put, .. } => out.push((&put.key, Written::Signed(&put.value))),
        Command::Authorized { command, .. } => collect(command, out),
        _ => {}
    }
}
