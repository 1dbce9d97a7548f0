//! The Edgeconf service: what the etcd API has no words for.

use crate::auth::Access;
use tonic::{Request, Response, Status};

use super::pb::{self, edgeconf_server::Edgeconf};
use super::signed::{signed_command, signing_status};
use super::{propose_status, store_status, Context};
use crate::signing::{keys::format_public_key, Keyring, Op, SignedChange, SigningError};
use crate::store::{CommandResponse, KeyRange, RangeRequest};

pub(crate) struct EdgeconfService(pub Context);

impl EdgeconfService {
    fn header(&self, revision: i64) -> pb::Header {
        let header = self.0.header(revision);
        pb::Header {
            cluster_id: header.cluster_id,
            member_id: header.member_id,
            revision: header.revision,
            raft_term: header.raft_term,
        }
    }
}

/// How a stored value (or, with `deleted`, a tombstone's note) is signed
/// and whether it checks out. `latest` is the key's latest sequence when
/// the value is the current one.
fn signature_of(
    keyring: &Keyring,
    key: &[u8],
    value: &[u8],
    latest: Option<u64>,
    deleted: bool,
    check_decrypt: bool,
) -> pb::Signature {
    let change = match SignedChange::from_stored(value) {
        Ok(Some(change)) => change,
        Ok(None) => {
            let problem = if !deleted {
                keyring
                    .trust
                    .check_stored(key, value, None)
                    .err()
                    .map(|err| err.to_string())
            } else if keyring.trust.is_protected(key) {
                // A lease revoked, or a write from before the key was
                // protected; worth seeing in an audit.
                Some("unsigned delete of a protected key".to_string())
            } else {
                None
            };
            return pb::Signature {
                problem: problem.unwrap_or_default(),
                ..Default::default()
            };
        }
        Err(err) => {
            return pb::Signature {
                signed: true,
                problem: err.to_string(),
                ..Default::default()
            }
        }
    };
    let checked = if deleted {
        if change.key != key || change.op != Op::Delete {
            Err(SigningError::WrongKey {
                stored_at: String::from_utf8_lossy(key).into_owned(),
                signed_for: String::from_utf8_lossy(&change.key).into_owned(),
            })
        } else {
            keyring.trust.check_stored_change(&change)
        }
    } else {
        keyring.check_stored(key, value, latest).map(|_| ())
    };
    let verified = checked.is_ok();
    pb::Signature {
        signed: true,
        signer: change.signer_id(),
        root_version: change.binding.map_or(0, |b| b.root_version),
        bound: change.binding.is_some(),
        expires_unix: change.expires_unix.unwrap_or_default(),
        expired: change.is_expired(crate::consensus::now_unix_secs()),
        sequence: change.sequence,
        encrypted: change.encrypted,
        verified,
        problem: checked.err().map(|err| err.to_string()).unwrap_or_default(),
        // Decrypting is only tried when asked (`edgeconf verify`).
        decryptable: check_decrypt
            && change.encrypted
            && verified
            && keyring.identities.decrypt(&change.value).is_ok(),
    }
}

/// The value clients see: a signed change's value, else the stored bytes.
fn visible_value(value: Vec<u8>) -> Vec<u8> {
    match SignedChange::from_stored(&value) {
        Ok(Some(change)) => change.value,
        _ => value,
    }
}

#[tonic::async_trait]
impl Edgeconf for EdgeconfService {
    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let caller = self.0.caller(&request)?;
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        caller.check(Access::Read, &KeyRange::single(req.key.clone()))?;
        let store = self.0.node.store();
        store.caught_up().await;
        let history = store.history(&req.key).map_err(store_status)?;
        let latest = store.sequence(&req.key).map_err(store_status)?;
        let count = history.entries.len();
        let revisions = history
            .entries
            .into_iter()
            .enumerate()
            .map(|(index, entry)| {
                // Only the key's current value must carry its latest sequence.
                let current = index + 1 == count && !entry.deleted;
                let signature = signature_of(
                    &self.0.keyring.get(),
                    &req.key,
                    &entry.value,
                    current.then_some(latest),
                    entry.deleted,
                    false,
                );
                let value = if entry.deleted {
                    Vec::new()
                } else {
                    visible_value(entry.value)
                };
                pb::Revision {
                    revision: entry.revision,
                    create_revision: entry.create_revision,
                    version: entry.version,
                    lease: entry.lease,
                    deleted: entry.deleted,
                    time_unix_ms: entry.time_unix_ms,
                    value_size: value.len() as u64,
                    value: if req.with_values { value } else { Vec::new() },
                    signature: Some(signature),
                }
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse {
            header: Some(self.header(history.revision)),
            revisions,
            compact_revision: history.compact_revision,
        }))
    }

    async fn signed_write(
        &self,
        request: Request<pb::SignedWriteRequest>,
    ) -> Result<Response<pb::SignedWriteResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/edgeconf.v1.Edgeconf/SignedWrite", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let req = request.into_inner();
        let change = SignedChange::from_stored(&req.change)
            .map_err(signing_status)?
            .ok_or_else(|| {
                Status::invalid_argument(
                    "edgeconf: not a signed change (create one with `edgeconf sign`)",
                )
            })?;
        let key = KeyRange::single(change.key.clone());
        caller.check(Access::Write, &key)?;
        if req.prev_kv {
            caller.check(Access::Read, &key)?;
        }
        let command = signed_command(
            &self.0.keyring.get(),
            self.0.node.store(),
            &change,
            req.prev_kv,
        )?;
        self.0.validate(&command).await?;
        let applied = self
            .0
            .propose_checked(&caller, command)
            .await
            .map_err(propose_status)?;
        let deleted = match applied.response {
            CommandResponse::DeleteRange(resp) => resp.deleted,
            _ => 0,
        };
        Ok(Response::new(pb::SignedWriteResponse {
            header: Some(self.header(applied.revision)),
            deleted,
            sequence: change.sequence,
        }))
    }

    async fn inspect(
        &self,
        request: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        if request.get_ref().key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        if !request.get_ref().serializable {
            self.0.node.read_index().await.map_err(propose_status)?;
        } else {
            self.0.node.store().caught_up().await;
        }
        let caller = self.0.caller(&request)?;
        let req = request.into_inner();
        caller.check(
            Access::Read,
            &KeyRange::from_etcd(req.key.clone(), req.range_end.clone()),
        )?;
        let store = self.0.node.store();
        let mut range = RangeRequest::new(KeyRange::from_etcd(req.key, req.range_end));
        range.revision = req.revision;
        let (resp, revision, sequences) =
            store.range_with_sequences(&range).map_err(store_status)?;
        let mut keys = Vec::with_capacity(resp.kvs.len());
        for (kv, sequence) in resp.kvs.into_iter().zip(sequences) {
            let latest_sequence = store.sequence(&kv.key).map_err(store_status)?;
            keys.push(pb::InspectedKey {
                signature: Some(signature_of(
                    &self.0.keyring.get(),
                    &kv.key,
                    &kv.value,
                    sequence,
                    false,
                    req.check_decrypt,
                )),
                protected: self.0.keyring.get().trust.is_protected(&kv.key),
                mod_revision: kv.mod_revision,
                latest_sequence,
                key: kv.key,
            });
        }
        Ok(Response::new(pb::InspectResponse {
            header: Some(self.header(revision)),
            keys,
        }))
    }

    async fn keyring(
        &self,
        request: Request<pb::KeyringRequest>,
    ) -> Result<Response<pb::KeyringResponse>, Status> {
        self.0.caller(&request)?.check_signed_in()?;
        let keyring = self.0.keyring.get();
        let format_all = |keys: &[[u8; 32]]| keys.iter().map(|k| format_public_key(k)).collect();
        Ok(Response::new(pb::KeyringResponse {
            trusted_keys: format_all(&keyring.trust.keys),
            prefixes: keyring
                .trust
                .prefixes
                .iter()
                .map(|rule| pb::TrustedPrefix {
                    prefix: String::from_utf8_lossy(&rule.prefix).into_owned(),
                    keys: format_all(&rule.keys),
                })
                .collect(),
            allow_unsigned: keyring.trust.allow_unsigned,
            recipients: keyring.recipients.iter().map(ToString::to_string).collect(),
            root_version: keyring.trust.root_version,
            root_expires_unix: keyring.root.as_ref().map_or(0, |root| root.expires_unix),
            root_expired: keyring.root.as_ref().is_some_and(|root| {
                crate::signing::root::check_fresh(root, crate::consensus::now_unix_secs()).is_err()
            }),
            pinned_root_keys: keyring.pinned.keys.len() as u32,
            audiences: keyring.audiences_held(),
        }))
    }

    async fn renders(
        &self,
        request: Request<pb::RendersRequest>,
    ) -> Result<Response<pb::RendersResponse>, Status> {
        self.0.caller(&request)?.check_signed_in()?;
        let files = self
            .0
            .renders
            .snapshot()
            .into_iter()
            .map(|s| pb::RenderedFile {
                name: s.name,
                dest: s.dest,
                revision: s.revision,
                rendered_unix_ms: s.rendered_unix_ms,
                bytes: s.bytes,
                renders: s.renders,
                writes: s.writes,
                error: s.error.unwrap_or_default(),
                reloads: s.reloads,
                reload_failures: s.reload_failures,
                reload_error: s.reload_error.unwrap_or_default(),
                drift_repairs: s.drift_repairs,
                drift: s.drift.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::RendersResponse { files }))
    }

    async fn plugins(
        &self,
        request: Request<pb::PluginsRequest>,
    ) -> Result<Response<pb::PluginsResponse>, Status> {
        self.0.caller(&request)?.check_signed_in()?;
        let loaded = &self.0.plugins;
        let plugins = loaded
            .plugins
            .as_ref()
            .map(|p| p.infos())
            .unwrap_or_default()
            .into_iter()
            .map(|info| pb::PluginState {
                name: info.name,
                kind: info.kind.to_string(),
                path: info.path.display().to_string(),
                digest: info.digest,
                calls: info.stats.calls,
                failures: info.stats.failures,
                refusals: info.stats.refusals,
                last_failure: info.stats.last_failure.unwrap_or_default(),
                reloads: info.stats.reloads,
                reload_error: info.stats.reload_error.unwrap_or_default(),
                loaded_unix_ms: info.stats.loaded_unix_ms,
            })
            .collect();
        let checks = loaded
            .checks
            .snapshot()
            .into_iter()
            .map(|(name, state)| pb::CheckResult {
                name,
                plugin: state.plugin,
                status: state.health.map_or("unknown", |h| h.as_str()).to_string(),
                output: state.output,
                runs: state.runs,
                plugin_failures: state.plugin_failures,
                checked_unix_ms: state.checked_unix_ms,
                since_unix_ms: state.since_unix_ms,
                interval_ms: state.interval.as_millis() as u64,
            })
            .collect();
        Ok(Response::new(pb::PluginsResponse { plugins, checks }))
    }

    async fn members(
        &self,
        request: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersResponse>, Status> {
        super::fleet::members(&self.0, request)
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        super::fleet::leave(&self.0, request)
    }

    async fn services(
        &self,
        request: Request<pb::ServicesRequest>,
    ) -> Result<Response<pb::ServicesResponse>, Status> {
        super::fleet::services(&self.0, request)
    }

    async fn register_service(
        &self,
        request: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::RegisterServiceResponse>, Status> {
        super::fleet::register(&self.0, request)
    }

    async fn deregister_service(
        &self,
        request: Request<pb::DeregisterServiceRequest>,
    ) -> Result<Response<pb::DeregisterServiceResponse>, Status> {
        super::fleet::deregister(&self.0, request)
    }

    async fn pass_service(
        &self,
        request: Request<pb::PassServiceRequest>,
    ) -> Result<Response<pb::PassServiceResponse>, Status> {
        super::fleet::pass(&self.0, request)
    }

    async fn rollout_start(
        &self,
        request: Request<pb::RolloutStartRequest>,
    ) -> Result<Response<pb::RolloutStartResponse>, Status> {
        if let Some(answer) = self
            .0
            .to_leader("/edgeconf.v1.Edgeconf/RolloutStart", &request)
            .await
        {
            return answer;
        }
        super::rollout::start(&self.0, request).await
    }

    async fn rollouts(
        &self,
        request: Request<pb::RolloutsRequest>,
    ) -> Result<Response<pb::RolloutsResponse>, Status> {
        // An edge's store trails the voters' (it cannot wait for a read
        // index): a rollout just started, or just aborted, would be missing
        // or stale there.
        if let Some(answer) = self
            .0
            .forwarded_read("/edgeconf.v1.Edgeconf/Rollouts", &request)
            .await
        {
            return answer;
        }
        super::rollout::list(&self.0, request).await
    }

    async fn rollout_control(
        &self,
        request: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::RolloutControlResponse>, Status> {
        if let Some(answer) = self
            .0
            .to_leader("/edgeconf.v1.Edgeconf/RolloutControl", &request)
            .await
        {
            return answer;
        }
        super::rollout::control(&self.0, request).await
    }
}
