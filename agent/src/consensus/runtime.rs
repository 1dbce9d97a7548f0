//! The raft thread: one OS thread runs a voter's raft loop and its peer
//! transport (the QUIC endpoint, its connections, the per-peer senders)
//! on a current-thread runtime of their own.
//!
//! A raft message then goes from the socket to raft-rs and from raft-rs
//! back to the socket without waking another thread: a follower answers an
//! append or a heartbeat on the thread that read it. Only the API's
//! requests and their replies cross between the worker threads and this
//! one. Each crossing wakes a thread on another CPU, 35-40 µs on the
//! benchmark VM, and a ReadIndex round made six of them when the raft loop
//! had a thread of its own and the transport ran on the workers
//! (BENCHMARKS.md, issue 19).
//!
//! The transport is started inside [`RaftRuntime::handle`], before the raft
//! loop exists (gossip shares it); the loop is handed over by
//! [`RaftRuntime::run`], and the thread ends when it does, dropping the
//! transport's tasks with the runtime.

use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

type Main = Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct RaftRuntime {
    handle: Handle,
    thread: JoinHandle<()>,
    main: oneshot::Sender<Main>,
}

impl RaftRuntime {
    /// Starts the thread and its runtime; it waits for [`RaftRuntime::run`]
    /// (and ends, with the tasks spawned on it, if this is dropped first).
    pub fn start() -> std::io::Result<RaftRuntime> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (main, given) = oneshot::channel::<Main>();
        let thread = std::thread::Builder::new()
            .name("edgeconf-raft".into())
            .spawn(move || {
                runtime.block_on(async {
                    if let Ok(main) = given.await {
                        main.await;
                    }
                });
            })?;
        Ok(RaftRuntime {
            handle,
            thread,
            main,
        })
    }

    /// Where the transport's tasks are spawned: enter it while starting
    /// the transport.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `main` (the raft loop) on the thread until it ends; join the
    /// thread to wait for that.
    pub fn run(self, main: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        // The thread waits for this send, so it cannot fail unless the
        // thread has gone (then joining it says so).
        let _ = self.main.send(Box::pin(main));
        self.thread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_spawned_before_the_loop_run_beside_it_and_end_with_it() {
        let runtime = RaftRuntime::start().unwrap();
        // A transport task, spawned before the loop exists.
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        runtime.handle().spawn(async move {
            tx.send(std::thread::current().name().map(String::from))
                .unwrap();
            let _ = stopped.await;
        });
        let thread = runtime.run(async move {
            tokio::task::yield_now().await;
            drop(stop);
        });
        thread.join().unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("edgeconf-raft"));
    }

    #[test]
    fn a_runtime_never_given_a_loop_ends_its_thread_when_dropped() {
        let runtime = RaftRuntime::start().unwrap();
        // A task that would hold its sender for ever.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        runtime.handle().spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(runtime);
        // The thread ends and drops its tasks with the runtime.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
