//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Each watcher runs as its own task feeding the stream's shared outbox, so
//! a watcher replaying a long history never delays the others' events.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use etcd_client::proto::{PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::access::{self, may_read};
use super::convert::event_to_pb;
use super::signed::serve_event;
use super::Context;
use crate::store::{EventKind, KeyRange, StoreError, Watcher};

/// Responses queued per stream before watchers wait for the client.
const OUTBOX_DEPTH: usize = 256;
/// Watchers one stream may hold (each is a task and a store subscription).
pub(crate) const MAX_WATCHERS_PER_STREAM: usize = 1024;
/// etcd's watch id for responses that belong to no single watcher.
const NO_WATCH_ID: i64 = -1;

pub(crate) struct WatchService(pub Context);

type Outbox = mpsc::Sender<Result<PbWatchResponse, Status>>;

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.0.caller(&request)?;
        caller.check_signed_in()?;
        let (outbox, responses) = mpsc::channel(OUTBOX_DEPTH);
        let stream = WatchStream {
            watcher: caller.watcher(),
            context: self.0.clone(),
            outbox,
            watchers: HashMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

struct RunningWatcher {
    task: JoinHandle<()>,
    progress: Arc<AtomicI64>,
}

struct WatchStream {
    /// Who opened the stream: each event is checked against what this user
    /// may read at the time it is sent.
    watcher: access::Watcher,
    context: Context,
    outbox: Outbox,
    watchers: HashMap<i64, RunningWatcher>,
    next_id: i64,
}

impl WatchStream {
    async fn run(mut self, mut requests: Streaming<PbWatchRequest>) {
        loop {
            let request = tokio::select! {
                request = requests.message() => request,
                // The client went away: stop reading.
                _ = self.outbox.closed() => break,
            };
            let Ok(Some(request)) = request else { break };
            let sent = match request.request_union {
                Some(PbWatchRequestUnion::CreateRequest(create)) => {
                    let range = KeyRange::from_etcd(create.key, create.range_end);
                    let options = Filters {
                        no_put: create.filters.contains(&0),
                        no_delete: create.filters.contains(&1),
                        prev_kv: create.prev_kv,
                    };
                    self.create(range, create.start_revision, create.watch_id, options)
                        .await
                }
                Some(PbWatchRequestUnion::CancelRequest(cancel)) => {
                    self.cancel(cancel.watch_id).await
                }
                Some(PbWatchRequestUnion::ProgressRequest(_)) => self.progress().await,
                None => true,
            };
            if !sent {
                break;
            }
        }
        for (_, watcher) in self.watchers.drain() {
            watcher.task.abort();
        }
    }

    async fn send(&self, response: PbWatchResponse) -> bool {
        self.outbox.send(Ok(response)).await.is_ok()
    }

    async fn create(
        &mut self,
        range: KeyRange,
        start_revision: i64,
        requested_id: i64,
        filters: Filters,
    ) -> bool {
        let id = if requested_id > 0 {
            requested_id
        } else {
            self.unused_id()
        };
        let refusal = if self.watchers.contains_key(&id) {
            Some("etcdserver: duplicate watch ID provided".to_string())
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(format!(
                "edgeconf: this stream has {MAX_WATCHERS_PER_STREAM} watchers, the most one stream may hold: cancel some or open another stream"
            ))
        } else {
            None
        };
        if let Some(cancel_reason) = refusal {
            return self
                .send(PbWatchResponse {
                    header: Some(self.context.current_header()),
                    watch_id: id,
                    created: true,
                    canceled: true,
                    cancel_reason,
                    ..Default::default()
                })
                .await;
        }
        // A client that was told of a write watches from after it.
        self.context.node.store().caught_up().await;
        // Tell the client first: it matches `created` replies to its requests.
        let created = PbWatchResponse {
            header: Some(self.context.current_header()),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        if !self.send(created).await {
            return false;
        }
        let watcher = self.context.node.store().watch(range, start_revision);
        let progress = Arc::new(AtomicI64::new(watcher.progress()));
        let task = tokio::spawn(feed(
            self.context.clone(),
            self.watcher.clone(),
            watcher,
            id,
            filters,
            self.outbox.clone(),
            progress.clone(),
        ));
        self.watchers.insert(id, RunningWatcher { task, progress });
        true
    }

    fn unused_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn cancel(&mut self, id: i64) -> bool {
        let Some(watcher) = self.watchers.remove(&id) else {
            return true;
        };
        watcher.task.abort();
        self.send(PbWatchResponse {
            header: Some(self.context.current_header()),
            watch_id: id,
            canceled: true,
            ..Default::default()
        })
        .await
    }

    /// Answers a progress request with the revision every watcher of this
    /// stream has caught up to: no later event on the stream is below it.
    async fn progress(&self) -> bool {
        let current = self.context.node.store().revision();
        let revision = self
            .watchers
            .values()
            .map(|w| w.progress.load(Ordering::SeqCst))
            .fold(current, i64::min);
        self.send(PbWatchResponse {
            header: Some(self.context.header(revision)),
            watch_id: NO_WATCH_ID,
            ..Default::default()
        })
        .await
    }
}

#[derive(Clone, Copy)]
struct Filters {
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

/// Moves one watcher's events to the stream until it fails or the client
/// goes away.
async fn feed(
    context: Context,
    identity: access::Watcher,
    mut watcher: Watcher,
    id: i64,
    filters: Filters,
    outbox: Outbox,
    progress: Arc<AtomicI64>,
) {
    loop {
        let events = match watcher.next().await {
            Ok(events) => events,
            Err(StoreError::Compacted { compact_revision }) => {
                let _ = outbox
                    .send(Ok(PbWatchResponse {
                        header: Some(context.current_header()),
                        watch_id: id,
                        canceled: true,
                        compact_revision,
                        cancel_reason: "etcdserver: mvcc: required revision has been compacted"
                            .into(),
                        ..Default::default()
                    }))
                    .await;
                return;
            }
            Err(err) => {
                let _ = outbox
                    .send(Ok(PbWatchResponse {
                        header: Some(context.current_header()),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: err.to_string(),
                        ..Default::default()
                    }))
                    .await;
                return;
            }
        };
        let last_revision = events.last().map_or(0, |e| e.kv.mod_revision);
        let mut served = Vec::with_capacity(events.len());
        for mut event in events {
            let wanted = match event.kind {
                EventKind::Put => !filters.no_put,
                EventKind::Delete => !filters.no_delete,
            };
            if !wanted || !may_read(&context, &identity, &event.kv.key) {
                continue;
            }
            if let Err(status) = serve_event(&context.keyring.get(), &mut event) {
                let _ = outbox
                    .send(Ok(PbWatchResponse {
                        header: Some(context.current_header()),
                        watch_id: id,
                        canceled: true,
                        cancel_reason: status.message().to_string(),
                        ..Default::default()
                    }))
                    .await;
                return;
            }
            served.push(event_to_pb(event, filters.prev_kv));
        }
        let events = served;
        if !events.is_empty() {
            let response = PbWatchResponse {
                header: Some(context.header(last_revision.max(context.node.store().revision()))),
                watch_id: id,
                events,
                ..Default::default()
            };
            if outbox.send(Ok(response)).await.is_err() {
                return;
            }
        }
        progress.store(watcher.progress(), Ordering::SeqCst);
    }
}
