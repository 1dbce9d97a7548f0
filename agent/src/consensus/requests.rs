//! How requests reach the raft thread and their answers come back: the
//! API's proposals and reads through [`submit`] and [`ask`], peer messages
//! through the transport's sink ([`screened_sink`]), which screens
//! forwarded proposals with the validator plugins first.

use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::sync::Arc;

use raft::eraftpb::MessageType;
use tokio::sync::oneshot;

use super::entries::{self, Admission};
use super::inbox::InboxSender as Sender;
use super::raft_loop::{Input, RaftStatus};
use super::{ProposeError, REQUEST_TIMEOUT};
use crate::transport::Delivery;

/// Inputs waiting for the raft thread (client requests and peer messages)
/// before more are refused: requests with "too many requests", peer
/// messages dropped (raft sends them again).
pub(super) const INBOX: usize = 16_384;

/// Queues a client's request for the raft thread, or says why not.
pub(super) fn submit(inputs: &Sender<Input>, input: Input) -> Result<(), ProposeError> {
    inputs.try_send(input).map_err(|err| match err {
        TrySendError::Full(_) => ProposeError::TooManyRequests,
        TrySendError::Disconnected(_) => ProposeError::Stopped,
    })
}

/// Queues `input` for the raft thread and waits for its reply.
pub(super) async fn ask<T>(
    inputs: &Sender<Input>,
    input: impl FnOnce(oneshot::Sender<Result<T, ProposeError>>) -> Input,
) -> Result<T, ProposeError> {
    let (reply, outcome) = oneshot::channel();
    submit(inputs, input(reply))?;
    wait(outcome).await
}

/// Waits for a reply, at most [`REQUEST_TIMEOUT`]; a reply dropped
/// unanswered means the agent is stopping.
pub(super) async fn wait<T>(
    outcome: oneshot::Receiver<Result<T, ProposeError>>,
) -> Result<T, ProposeError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, outcome).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ProposeError::Stopped),
        Err(_) => Err(ProposeError::Timeout),
    }
}

/// Queues a peer's message; a full inbox drops it (raft retransmits),
/// while the transport's own reports (unreachable, snapshot sent) queue
/// past the bound: raft would stall without them, and the raft thread
/// itself reports through here, so it must never wait.
fn deliver(inputs: &Sender<Input>, delivery: Delivery) {
    match inputs.try_send(Input::Delivery(delivery)) {
        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
        Err(TrySendError::Full(Input::Delivery(Delivery::Message(_)))) => {
            tracing::debug!("raft inbox full: dropped a peer message");
        }
        Err(TrySendError::Full(report)) => {
            inputs.send_past_bound(report);
        }
    }
}

/// Forwarded proposals screened at most this many at a time.
const SCREENING_CONCURRENCY: usize = 64;

/// Where the transport delivers: straight to the raft thread, except
/// proposals, which `screening` (if any) filters first on a blocking
/// thread. Other messages are not held up behind them.
pub(super) fn screened_sink(
    inputs: Sender<Input>,
    screening: Option<Admission>,
    status: Arc<RaftStatus>,
) -> crate::transport::Sink {
    let Some(screening) = screening else {
        return Arc::new(move |delivery: Delivery| {
            deliver(&inputs, delivery);
        });
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(SCREENING_CONCURRENCY));
    Arc::new(move |delivery: Delivery| {
        let runtime = tokio::runtime::Handle::try_current();
        let message = match delivery {
            Delivery::Message(message)
                if message.get_msg_type() == MessageType::MsgPropose && runtime.is_ok() =>
            {
                message
            }
            other => {
                deliver(&inputs, other);
                return;
            }
        };
        let (inputs, screening, permits) = (inputs.clone(), screening.clone(), permits.clone());
        let status = status.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let screened = tokio::task::spawn_blocking(move || {
                let mut message = message;
                let refused = entries::retain_screened(&mut message, &screening);
                status
                    .forwarded_refused
                    .fetch_add(refused, Ordering::Relaxed);
                message
            })
            .await;
            if let Ok(message) = screened {
                if !message.entries.is_empty() {
                    deliver(&inputs, Delivery::Message(message));
                }
            }
        });
    })
}

#[cfg(test)]
mod tests {
    use super::super::inbox::inbox;
    use super::*;

    #[test]
    fn a_full_inbox_refuses_requests_with_too_many_requests() {
        let (inputs, queue) = inbox(1);
        assert!(submit(&inputs, Input::Stop).is_ok());
        assert!(matches!(
            submit(&inputs, Input::Stop),
            Err(ProposeError::TooManyRequests)
        ));
        let status = crate::api::propose_status(ProposeError::TooManyRequests);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "etcdserver: too many requests");
        drop(queue);
        assert!(matches!(
            submit(&inputs, Input::Stop),
            Err(ProposeError::Stopped)
        ));
    }
}
