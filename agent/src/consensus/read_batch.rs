//! Linearizable reads share ReadIndex rounds before they reach the raft
//! thread. While one round is out, the readers that arrive wait together
//! for the next, which is asked as soon as the first ends (etcd's
//! linearizable read loop does the same). Under load the raft thread takes
//! one input per round instead of one per read, and the followers answer
//! one heartbeat round per batch.
//!
//! A reader never joins a round already asked: its round starts after it
//! arrived, so it reads at least everything committed before it asked.
//! (`reads.rs` keeps the rounds themselves apart on the raft thread.)

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::raft_loop::Input;
use super::{ask, wait, ProposeError, Sender};

type Reader = oneshot::Sender<Result<(), ProposeError>>;

/// Readers waiting for the next round, and whether a round is out.
#[derive(Default)]
struct Pending {
    readers: Vec<Reader>,
    asking: bool,
}

pub(super) struct ReadBatcher {
    inputs: Sender<Input>,
    pending: Arc<Mutex<Pending>>,
}

impl ReadBatcher {
    pub fn new(inputs: Sender<Input>) -> ReadBatcher {
        ReadBatcher {
            inputs,
            pending: Arc::default(),
        }
    }

    /// Waits until this member has applied everything committed when the
    /// call began.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        let (reply, outcome) = oneshot::channel();
        let start_rounds = {
            let mut pending = lock(&self.pending);
            pending.readers.push(reply);
            !std::mem::replace(&mut pending.asking, true)
        };
        if start_rounds {
            // A task of its own, not this reader's: a reader that gives up
            // must not take the others' round with it.
            tokio::spawn(ask_rounds(self.inputs.clone(), self.pending.clone()));
        }
        wait(outcome).await
    }
}

/// Asks one round after another, each for the readers that arrived while
/// the one before was out, until nobody waits.
async fn ask_rounds(inputs: Sender<Input>, pending: Arc<Mutex<Pending>>) {
    loop {
        let readers = {
            let mut pending = lock(&pending);
            pending.readers.retain(|reader| !reader.is_closed());
            if pending.readers.is_empty() {
                pending.asking = false;
                return;
            }
            std::mem::take(&mut pending.readers)
        };
        // A round that times out drops its reply: the raft thread stops
        // asking it.
        let outcome = ask(&inputs, |reply| Input::ReadIndex { reply }).await;
        for reader in readers {
            let _ = reader.send(outcome.as_ref().map_err(again).copied());
        }
    }
}

/// The same failure, for each reader of a round.
fn again(err: &ProposeError) -> ProposeError {
    match err {
        ProposeError::Rejected(err) => ProposeError::Failed(err.to_string()),
        ProposeError::Failed(why) => ProposeError::Failed(why.clone()),
        ProposeError::NoLeader => ProposeError::NoLeader,
        ProposeError::Timeout => ProposeError::Timeout,
        ProposeError::LeaderChanged => ProposeError::LeaderChanged,
        ProposeError::Stopped => ProposeError::Stopped,
        ProposeError::TooManyRequests => ProposeError::TooManyRequests,
        ProposeError::NotLeader(leader) => ProposeError::NotLeader(*leader),
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::inbox::{inbox, InboxReceiver};
    use super::*;

    type Round = oneshot::Sender<Result<(), ProposeError>>;

    /// Stands in for the raft thread: hands each ReadIndex ask it takes to
    /// the test, which answers it.
    fn raft_thread(mut queue: InboxReceiver<Input>) -> tokio::sync::mpsc::UnboundedReceiver<Round> {
        let (rounds, asked) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            while let Some(input) = queue.recv() {
                if let Input::ReadIndex { reply } = input {
                    let _ = rounds.send(reply);
                }
            }
        });
        asked
    }

    async fn reader(
        batcher: &Arc<ReadBatcher>,
    ) -> tokio::task::JoinHandle<Result<(), ProposeError>> {
        let batcher = batcher.clone();
        let handle = tokio::spawn(async move { batcher.read_index().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        handle
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_who_arrive_while_a_round_is_out_wait_for_the_next() {
        let (inputs, queue) = inbox(64);
        let mut rounds = raft_thread(queue);
        let batcher = Arc::new(ReadBatcher::new(inputs));
        let first = reader(&batcher).await;
        let round_one = rounds.recv().await.unwrap();
        // Round one is out: these ten arrive after it was asked.
        let mut later = Vec::new();
        for _ in 0..10 {
            later.push(reader(&batcher).await);
        }
        round_one.send(Ok(())).unwrap();
        assert!(first.await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            later.iter().all(|reader| !reader.is_finished()),
            "a reader was answered by a round asked before it arrived"
        );
        // The ten share round two.
        let round_two = rounds.recv().await.unwrap();
        round_two.send(Ok(())).unwrap();
        for reader in later {
            assert!(reader.await.unwrap().is_ok());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            rounds.try_recv().is_err(),
            "readers waiting together cost more than one round"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_that_cannot_be_asked_fails_its_readers_and_the_next_asks_again() {
        let (inputs, mut queue) = inbox(1);
        // The inbox is full: the round is refused, as a request would be.
        assert!(inputs.try_send(Input::Stop).is_ok());
        let batcher = Arc::new(ReadBatcher::new(inputs));
        assert!(matches!(
            batcher.read_index().await,
            Err(ProposeError::TooManyRequests)
        ));
        assert!(matches!(queue.try_recv(), Ok(Input::Stop)));
        // Room again: the next reader's round is asked and answered.
        let mut rounds = raft_thread(queue);
        let next = reader(&batcher).await;
        rounds.recv().await.unwrap().send(Ok(())).unwrap();
        assert!(next.await.unwrap().is_ok());
    }
}
