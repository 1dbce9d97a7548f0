//! Lets the HTTP/2 server send what it has ready in one write.
//!
//! On a connection that takes vectored writes, the `h2` crate keeps a DATA
//! frame's payload of 256 bytes or more as a buffer of its own and writes
//! it out before it encodes the next frame. A gRPC response whose message
//! is that large (a get of a 256-byte value) therefore left in two writes,
//! its headers and message and then its trailers, and the responses of the
//! streams sharing a connection never left together: 2.0 `writev`s per get
//! under 64 clients, each one a pass through the TCP stack for this member
//! and a wake-up for the client.
//!
//! [`CoalescedWrites`] tells the server that the connection takes no
//! vectored writes, so `h2` copies payloads under 1 KiB into its own
//! buffer, and it holds the server's writes in a [`BufWriter`] until the
//! server flushes, so a larger frame's header and payload still leave in
//! one write. The buffer costs 8 KiB per client connection; frames larger
//! than that leave in two writes.
//!
//! A flush also waits for its turn: the first time the server flushes
//! what it holds, the flush goes behind the tasks the worker has queued
//! (tokio's `yield_now` defers a wake-up until the worker runs out of
//! queued tasks, or to its periodic check of the I/O driver, after at most
//! `event_interval` tasks). The readers of one ReadIndex round are woken
//! together. Without the wait, the first one's response woke the
//! connection's task into the worker's LIFO slot and left alone, then the
//! next one's, one write per response. With it, the responses the round's
//! readers finish meanwhile leave in one write. A worker with nothing else
//! queued gives the turn at once, so a lone client does not wait.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};

/// A client connection whose writes wait for the server's flush, and
/// whose flushes wait for their turn on the worker.
pub struct CoalescedWrites<S> {
    inner: BufWriter<S>,
    turn: Turn,
}

impl<S: AsyncWrite> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner: BufWriter::new(inner),
            turn: Turn::default(),
        }
    }
}

/// A flush's place behind the worker's queued tasks (see the module's
/// documentation). A turn, once come, lasts until the flush completes, so
/// a flush that waits for the socket does not queue again. At most one
/// deferred wake-up is out at a time.
#[derive(Default)]
struct Turn {
    due: Arc<Due>,
    state: TurnState,
}

#[derive(Default, PartialEq)]
enum TurnState {
    /// No flush is under way.
    #[default]
    None,
    /// A deferred wake-up is out.
    Waiting,
    /// The turn has come; the flush may write.
    Come,
}

/// The deferred wake-up: marks the turn come and wakes the connection's
/// task (whichever waker it last polled with).
#[derive(Default)]
struct Due {
    come: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Due {
    fn wake(self: Arc<Self>) {
        self.come.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Turn {
    /// Whether the flush may write now; if not, the task is woken when it
    /// may.
    fn come(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state == TurnState::None {
            self.due.come.store(false, Ordering::Release);
            let waker = Waker::from(self.due.clone());
            // Outside a runtime, yield_now wakes at once: the turn has come.
            let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
            self.state = TurnState::Waiting;
        }
        if self.state == TurnState::Waiting {
            self.due.task.register(cx.waker());
            if !self.due.come.load(Ordering::Acquire) {
                return false;
            }
            self.state = TurnState::Come;
        }
        true
    }

    /// The flush completed: the next one waits for a turn of its own. (A
    /// flush of an empty buffer leaves a wake-up that is out to come.)
    fn used(&mut self) {
        if self.state == TurnState::Come {
            self.state = TurnState::None;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    /// False, so that `h2` buffers small frames itself (see the module's
    /// documentation); the writes still reach the socket whole.
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.inner.buffer().is_empty() && !self.turn.come(cx) {
            return Poll::Pending;
        }
        let flushed = ready!(Pin::new(&mut self.inner).poll_flush(cx));
        self.turn.used();
        Poll::Ready(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected + AsyncWrite> tonic::transport::server::Connected
    for CoalescedWrites<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_leave_together_when_the_server_flushes() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut conn = CoalescedWrites::new(server);
        assert!(!conn.is_write_vectored(), "h2 must buffer small frames");

        // A frame header and payload, then the trailers, as h2 writes them.
        conn.write_all(&[1; 9]).await.unwrap();
        conn.write_all(&[2; 2000]).await.unwrap();
        conn.write_all(&[3; 10]).await.unwrap();
        let mut got = vec![0; 4096];
        let early = tokio::time::timeout(Duration::from_millis(50), client.read(&mut got)).await;
        assert!(early.is_err(), "nothing may leave before the flush");

        conn.flush().await.unwrap();
        let n = client.read(&mut got).await.unwrap();
        assert_eq!(n, 2019, "the three writes leave as one");
        assert_eq!(&got[..9], &[1; 9]);
        assert_eq!(got[2018], 3);

        // The other direction is untouched.
        client.write_all(b"request").await.unwrap();
        let mut read = [0; 7];
        conn.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"request");
    }

    #[tokio::test]
    async fn a_flush_waits_for_the_tasks_already_queued() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut conn = CoalescedWrites::new(server);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));

        // A reader's response is ready; another reader's task is queued.
        conn.write_all(b"first").await.unwrap();
        let queued = order.clone();
        tokio::spawn(async move { queued.lock().unwrap().push("queued task ran") });
        conn.flush().await.unwrap();
        order.lock().unwrap().push("flushed");
        assert_eq!(*order.lock().unwrap(), ["queued task ran", "flushed"]);
        let mut got = [0; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first");

        // With nothing queued the turn comes at once, every time.
        for round in 0..3u8 {
            conn.write_all(&[round]).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), conn.flush())
                .await
                .expect("a flush with nothing queued finishes")
                .unwrap();
            let mut one = [0; 1];
            client.read_exact(&mut one).await.unwrap();
            assert_eq!(one, [round]);
        }
    }
}
