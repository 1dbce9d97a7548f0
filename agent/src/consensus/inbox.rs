//! The raft thread's inbox: a queue bounded by how many inputs wait in it,
//! which holds memory only for those.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates and writes all `n` slots
//! when it is made: with 16,384 slots of 200 bytes that was 3.2 MiB,
//! resident in every agent from its start, idle or not (BENCHMARKS.md,
//! issue 19). Here an unbounded channel, which allocates blocks as inputs
//! arrive and frees them as they leave, is bounded by a counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{TryRecvError, TrySendError};
use std::sync::Arc;

use tokio::sync::mpsc;

/// Makes an inbox that refuses [`InboxSender::try_send`] while `capacity`
/// inputs wait.
pub(crate) fn inbox<T>(capacity: usize) -> (InboxSender<T>, InboxReceiver<T>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    (
        InboxSender {
            sender,
            waiting: waiting.clone(),
            capacity,
        },
        InboxReceiver { receiver, waiting },
    )
}

pub(crate) struct InboxSender<T> {
    sender: mpsc::UnboundedSender<T>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> Self {
        InboxSender {
            sender: self.sender.clone(),
            waiting: self.waiting.clone(),
            capacity: self.capacity,
        }
    }
}

impl<T> InboxSender<T> {
    /// Queues `input` unless the inbox is full or its receiver has gone.
    pub(crate) fn try_send(&self, input: T) -> Result<(), TrySendError<T>> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(input));
        }
        self.sender.send(input).map_err(|refused| {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(refused.0)
        })
    }

    /// Queues `input` even past the bound, for the few inputs that must
    /// never be dropped nor wait (the transport's reports, `Stop`). False
    /// when the receiver has gone.
    pub(crate) fn send_past_bound(&self, input: T) -> bool {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.sender.send(input).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }
}

pub(crate) struct InboxReceiver<T> {
    receiver: mpsc::UnboundedReceiver<T>,
    waiting: Arc<AtomicUsize>,
}

impl<T> InboxReceiver<T> {
    /// Waits for an input on a thread outside any runtime.
    pub(crate) fn recv(&mut self) -> Option<T> {
        let input = self.receiver.blocking_recv()?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Some(input)
    }

    /// Waits for an input (`None`: every sender has gone).
    pub(crate) async fn next(&mut self) -> Option<T> {
        let input = self.receiver.recv().await?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Some(input)
    }

    /// Whether no input waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let input = self.receiver.try_recv().map_err(|err| match err {
            mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })?;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        Ok(input)
    }
}

impl<T> Drop for InboxReceiver<T> {
    /// Once the receiver has gone, senders learn so (`Disconnected`)
    /// rather than that it is full.
    fn drop(&mut self) {
        self.waiting.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_while_full_and_takes_again_once_one_is_taken() {
        let (sender, mut receiver) = inbox(2);
        assert!(sender.try_send(1).is_ok());
        assert!(sender.clone().try_send(2).is_ok());
        assert!(matches!(sender.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(receiver.try_recv(), Ok(1));
        assert!(sender.try_send(3).is_ok());
        assert!(matches!(sender.try_send(4), Err(TrySendError::Full(4))));
        assert_eq!(receiver.try_recv(), Ok(2));
        assert_eq!(receiver.recv(), Some(3));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn past_the_bound_always_queues_and_still_counts() {
        let (sender, mut receiver) = inbox(1);
        assert!(sender.try_send("request").is_ok());
        assert!(sender.send_past_bound("report"));
        assert!(matches!(
            sender.try_send("more"),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(receiver.recv(), Some("request"));
        // The report still waits: one input, at the bound of one.
        assert!(matches!(
            sender.try_send("more"),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(receiver.recv(), Some("report"));
        assert!(sender.try_send("more").is_ok());
    }

    #[test]
    fn a_gone_receiver_refuses_without_counting() {
        let (sender, receiver) = inbox(1);
        assert!(sender.try_send(0).is_ok());
        drop(receiver);
        assert!(matches!(
            sender.try_send(1),
            Err(TrySendError::Disconnected(1))
        ));
        assert!(!sender.send_past_bound(2));
        // Nothing was left counted as waiting.
        assert_eq!(sender.waiting.load(Ordering::Acquire), 0);
    }
}
