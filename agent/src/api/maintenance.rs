//! etcd's Maintenance service: Status (what `etcdctl endpoint status`
//! shows), Alarm, Hash and HashKV, Defragment, MoveLeader and Snapshot
//! (an image: the store's copy and its SHA-256, as etcd sends); Downgrade
//! is not offered.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse,
    PbDowngradeRequest, PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest,
    PbHashResponse, PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse,
    PbSnapshotRequest, PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{propose_status, store_status, unsupported, Context};
use crate::upkeep::alarms::{self, Alarm};

/// etcd's `AlarmRequest.AlarmAction`.
const ALARM_GET: i32 = 0;
const ALARM_ACTIVATE: i32 = 1;
const ALARM_DEACTIVATE: i32 = 2;

/// The etcd API version reported to clients, which some of them check.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub(crate) struct MaintenanceService(pub Context);

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        self.0.caller(&request)?.check_admin("alarm")?;
        let ask = *request.get_ref();
        // Raising and disarming are writes under `_edgeconf/`: only the
        // leader proposes them.
        if ask.action != ALARM_GET {
            if let Some(answer) = self
                .0
                .to_leader("/etcdserverpb.Maintenance/Alarm", &request)
                .await
            {
                return answer;
            }
        }
        let node = &self.0.node;
        let wanted = Alarm::from_etcd_type(ask.alarm);
        match ask.action {
            ALARM_GET => {}
            ALARM_ACTIVATE | ALARM_DEACTIVATE => {
                // As etcd: an alarm of type NONE changes nothing.
                let Some(alarm) = wanted else {
                    return Ok(Response::new(PbAlarmResponse {
                        header: Some(self.0.current_header()),
                        alarms: Vec::new(),
                    }));
                };
                let existed = alarms::active(node.store())
                    .map_err(store_status)?
                    .iter()
                    .any(|a| a.member == ask.member_id && a.alarm == alarm);
                let command = if ask.action == ALARM_ACTIVATE {
                    alarms::raise(
                        ask.member_id,
                        alarm,
                        "raised by an admin (Maintenance.Alarm)",
                    )
                } else {
                    alarms::disarm(ask.member_id, alarm)
                };
                node.propose(command).await.map_err(propose_status)?;
                // As etcd: the alarm raised, or the one disarmed (none if
                // it was not raised).
                let changed = ask.action == ALARM_ACTIVATE || existed;
                return Ok(Response::new(PbAlarmResponse {
                    header: Some(self.0.current_header()),
                    alarms: changed
                        .then_some(PbAlarmMember {
                            member_id: ask.member_id,
                            alarm: alarm.etcd_type(),
                        })
                        .into_iter()
                        .collect(),
                }));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: alarm action {other} is not GET, ACTIVATE or DEACTIVATE"
                )))
            }
        }
        let active = alarms::active(node.store()).map_err(store_status)?;
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.0.current_header()),
            alarms: active
                .into_iter()
                .filter(|a| ask.member_id == 0 || a.member == ask.member_id)
                .filter(|a| wanted.is_none_or(|w| w == a.alarm))
                .map(|a| PbAlarmMember {
                    member_id: a.member,
                    alarm: a.alarm.etcd_type(),
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let node = &self.0.node;
        let revision = node.store().revision();
        let db_size = node.store().size_bytes() as i64;
        Ok(Response::new(PbStatusResponse {
            header: Some(self.0.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            db_size_in_use: db_size,
            leader: node.leader(),
            raft_index: node.commit_index(),
            raft_applied_index: node.applied_index(),
            raft_term: node.term(),
            storage_version: format!("edgeconf {}", env!("CARGO_PKG_VERSION")),
            errors: status_errors(&self.0),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.0.caller(&request)?.check_admin("defragment")?;
        let store = self.0.node.store().clone();
        let done = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .map_err(|err| Status::internal(format!("etcdserver: defragment failed: {err}")))?
            .map_err(store_status)?;
        tracing::info!(
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            "defragmented the store"
        );
        // As etcd: no header.
        Ok(Response::new(PbDefragmentResponse { header: None }))
    }

    async fn hash(
        &self,
        request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        self.0.caller(&request)?.check_admin("hash")?;
        let store = self.0.node.store().clone();
        let (hash, revision) = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|err| Status::internal(format!("etcdserver: hash failed: {err}")))?
            .map_err(store_status)?;
        Ok(Response::new(PbHashResponse {
            header: Some(self.0.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.0.caller(&request)?.check_admin("hashkv")?;
        let revision = request.get_ref().revision;
        let store = self.0.node.store().clone();
        let hashed = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|err| Status::internal(format!("etcdserver: hashkv failed: {err}")))?
            .map_err(store_status)?;
        Ok(Response::new(PbHashKvResponse {
            header: Some(self.0.current_header()),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.0.caller(&request)?.check_admin("snapshot")?;
        let store = self.0.node.store().clone();
        let header = self.0.current_header();
        // The image goes to a private file in the data dir first (one
        // consistent read), then out in chunks with the bytes still to come.
        let dir = store
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let file = tokio::task::spawn_blocking(move || {
            let mut file = tempfile::Builder::new()
                .prefix(".image-")
                .tempfile_in(&dir)
                .map_err(|err| {
                    Status::internal(format!("etcdserver: cannot make the image file: {err}"))
                })?;
            store
                .write_image(file.as_file_mut())
                .map_err(super::store_status)?;
            Ok::<_, Status>(file)
        })
        .await
        .map_err(|err| Status::internal(format!("etcdserver: snapshot failed: {err}")))??;
        let (chunks, responses) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || send_image(file, header, chunks));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(responses),
        )))
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        self.0.caller(&request)?.check_admin("move-leader")?;
        if let Some(answer) = self
            .0
            .to_leader("/etcdserverpb.Maintenance/MoveLeader", &request)
            .await
        {
            return answer;
        }
        let target = request.get_ref().target_id;
        self.0
            .node
            .move_leader(target)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbMoveLeaderResponse {
            header: Some(self.0.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        self.0.caller(&request)?.check_admin("downgrade")?;
        Err(unsupported("Downgrade"))
    }
}

/// Sends the image in `file` in chunks, each with the bytes still to come;
/// the file is removed when done (or when the client goes away).
fn send_image(
    file: tempfile::NamedTempFile,
    header: etcd_client::proto::PbResponseHeader,
    chunks: tokio::sync::mpsc::Sender<Result<PbSnapshotResponse, Status>>,
) {
    use std::io::Read as _;
    const CHUNK: usize = 64 << 10;
    let mut reader = match file.reopen() {
        Ok(reader) => reader,
        Err(err) => {
            let _ = chunks.blocking_send(Err(Status::internal(format!(
                "etcdserver: cannot read the image: {err}"
            ))));
            return;
        }
    };
    let mut remaining = reader.metadata().map_or(0, |m| m.len());
    let mut first = true;
    while remaining > 0 {
        let mut blob = vec![0; CHUNK.min(remaining as usize)];
        if let Err(err) = reader.read_exact(&mut blob) {
            let _ = chunks.blocking_send(Err(Status::internal(format!(
                "etcdserver: cannot read the image: {err}"
            ))));
            return;
        }
        remaining -= blob.len() as u64;
        let response = PbSnapshotResponse {
            header: first.then_some(header),
            remaining_bytes: remaining,
            blob,
            ..Default::default()
        };
        first = false;
        if chunks.blocking_send(Ok(response)).is_err() {
            return;
        }
    }
}

/// What `Status` reports in `errors` (etcdctl's ERRORS column): a member
/// with peers that has never reached any of them, and an edge whose feed
/// is stale (it serves its last verified config, and says how old).
fn status_errors(context: &super::Context) -> Vec<String> {
    let behind = |revisions: i64| match revisions {
        0 => String::new(),
        n => format!(", {n} revisions behind what a voter last signed it had"),
    };
    let node = &context.node;
    let mut errors = Vec::new();
    let has_peers = context.feed.is_some() || node.members().is_ok_and(|members| members.len() > 1);
    if has_peers && node.transport().contact().last().is_none() {
        errors.push(
            "no peer has ever been reached: check that [peer_trust] keys lists every member's node key \
             (`edgeconf node-key` prints it) and that the peers listen at their peer URLs"
                .to_string(),
        );
    }
    if let Some(feed) = &context.feed {
        let revision = feed
            .verified_revision
            .load(std::sync::atomic::Ordering::Relaxed);
        match feed.staleness() {
            Some(problem) => errors.push(format!(
                "{problem} (serving revision {}{})",
                node.store().revision(),
                behind(feed.revisions_behind())
            )),
            None if feed.revisions_behind() > 0 => errors.push(format!(
                "catching up: at revision {revision}{}",
                behind(feed.revisions_behind())
            )),
            None => {}
        }
    }
    errors
}
