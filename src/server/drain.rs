//! Telling a listener's connections to finish when the server stops, and waiting until
//! they have. hyper-util's `GracefulShutdown` does this with a watch channel that every
//! connection polls at every wake-up, some 900 instructions a request (callgrind). Here a
//! wake-up reads one flag, and the stop wakes each connection's task once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// A connection that can be told to finish: to answer what it has begun and then close.
/// (hyper-util's `GracefulConnection` says the same, but is sealed to hyper's own types.)
pub trait Finish: Future {
    fn finish(self: Pin<&mut Self>);
}

/// The connections of one listener (or of its tunnels), drained together.
#[derive(Clone, Default)]
pub struct Drain {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    closing: AtomicBool,
    /// The task serving each live connection that has been polled, by its number.
    tasks: Mutex<HashMap<u64, Waker>>,
    next_number: AtomicU64,
    live: AtomicUsize,
    none_live: Notify,
}

impl Shared {
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        // A poisoned lock only means a task panicked while holding it; the map is whole.
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// `connection`, told to finish once `shutdown` is called.
    pub fn watch<C: Finish>(&self, connection: C) -> Watched<C> {
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        Watched {
            connection,
            shared: Arc::clone(&self.shared),
            number: self.shared.next_number.fetch_add(1, Ordering::Relaxed),
            task: None,
            told: false,
        }
    }

    /// Tells every watched connection, and every one watched from now on, to finish, and
    /// waits until all have ended.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        // Before the tasks are woken: a connection that registers after this sees the flag
        // in the same poll (the lock orders the two).
        shared.closing.store(true, Ordering::SeqCst);
        for task in shared.tasks().values() {
            task.wake_by_ref();
        }
        // `notify_one` keeps its wake-up for a waiter that comes later, so the last
        // connection ending between the check and the wait is not missed.
        while shared.live.load(Ordering::SeqCst) > 0 {
            shared.none_live.notified().await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection being served, which finishes gracefully when its `Drain` says so.
    pub struct Watched<C> {
        #[pin]
        connection: C,
        shared: Arc<Shared>,
        number: u64,
        // The task registered for this connection, woken when closing begins.
        task: Option<Waker>,
        told: bool,
    }

    impl<C> PinnedDrop for Watched<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.task.is_some() {
                this.shared.tasks().remove(this.number);
            }
            if this.shared.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                this.shared.none_live.notify_one();
            }
        }
    }
}

impl<C: Finish> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.project();
        // Once per connection: a spawned task's waker stays the same from poll to poll.
        if !this
            .task
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            *this.task = Some(cx.waker().clone());
            this.shared.tasks().insert(*this.number, cx.waker().clone());
        }
        let mut connection = this.connection;
        if !*this.told && this.shared.closing.load(Ordering::SeqCst) {
            *this.told = true;
            connection.as_mut().finish();
        }
        connection.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::time::Duration;

    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use crate::server::version::Server;

    /// A served HTTP/1.1 connection, watched by `drain`, whose answers wait for `answer`.
    fn serve(drain: &Drain, answer: &Arc<Notify>) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(4096);
        let answer = Arc::clone(answer);
        let service = service_fn(move |_request| {
            let answer = Arc::clone(&answer);
            async move {
                answer.notified().await;
                Ok::<_, Infallible>(http::Response::new(String::from("done")))
            }
        });
        // HTTP/2 offered, so a connection that has sent nothing is still being read to
        // tell its protocol when the drain begins.
        let server_side = Arc::new(Server::new(64 * 1024, Some(Duration::from_secs(30))));
        let connection = server_side.serve(server, service);
        let watched = drain.watch(connection);
        (client, tokio::spawn(async move { watched.await.unwrap() }))
    }

    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not happen"))
    }

    #[tokio::test]
    async fn idle_connections_end_when_the_drain_begins_and_busy_ones_after_their_answer() {
        let drain = Drain::new();
        let answer = Arc::new(Notify::new());
        let (_idle_client, idle) = serve(&drain, &answer);
        let (mut busy_client, busy) = serve(&drain, &answer);
        busy_client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Both tasks have run and wait: one for a request, one for its answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!idle.is_finished() && !busy.is_finished());

        let shutdown = tokio::spawn({
            let drain = drain.clone();
            async move { drain.shutdown().await }
        });
        within("the idle connection's end", idle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!shutdown.is_finished(), "the drain waits for the answer");
        assert!(!busy.is_finished());

        answer.notify_one();
        let mut response = String::new();
        within("the answer", busy_client.read_to_string(&mut response))
            .await
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("connection: close"), "{response}");
        within("the drain's end", shutdown).await.unwrap();
        assert_eq!(drain.shared.live.load(Ordering::SeqCst), 0);
        assert!(drain.shared.tasks().is_empty());

        // Watched after the drain began: told at its first poll.
        let (_late_client, late) = serve(&drain, &answer);
        within("the late connection's end", late).await.unwrap();
    }
}
