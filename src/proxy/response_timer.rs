//! The response-header timeout with one timer per client connection instead of one per
//! request. Making a timer and dropping it takes the timer wheel's lock twice; moving the
//! deadline of a registered timer later is one atomic store (tokio re-files it only when the
//! old deadline comes). Requests on a connection come one after another (HTTP/1), so each
//! takes the connection's timer, moves its deadline and gives it back; a concurrent request
//! (HTTP/2) finds the slot empty and makes its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A client connection's spare timer.
#[derive(Default)]
pub struct ResponseTimer {
    spare: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ResponseTimer {
    /// `future`, failing with `Elapsed` when it has not finished within `timeout`.
    pub fn bound<F: Future>(&self, timeout: Duration, future: F) -> Bounded<'_, F> {
        Bounded {
            future,
            timeout,
            timer: None,
            home: self,
        }
    }

    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let spare = self.spare.lock().expect("poisoned").take();
        match spare {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn give_back(&self, timer: Pin<Box<Sleep>>) {
        let mut spare = self.spare.lock().expect("poisoned");
        if spare.is_none() {
            *spare = Some(timer);
        }
    }
}

/// The deadline passed first.
#[derive(Debug)]
pub struct Elapsed;

pin_project_lite::pin_project! {
    /// See [`ResponseTimer::bound`]. The deadline starts at the first poll.
    pub struct Bounded<'a, F> {
        #[pin]
        future: F,
        timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        home: &'a ResponseTimer,
    }

    impl<'a, F> PinnedDrop for Bounded<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(timer) = this.timer.take() {
                this.home.give_back(timer);
            }
        }
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let timer = match this.timer {
            Some(timer) => timer,
            None => this
                .timer
                .insert(this.home.take(Instant::now() + *this.timeout)),
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_future_past_its_deadline_fails_and_the_timer_serves_the_next_one() {
        let timer = ResponseTimer::default();
        let slow = timer.bound(Duration::from_secs(5), std::future::pending::<()>());
        assert!(slow.await.is_err());
        assert!(timer.spare.lock().unwrap().is_some(), "the timer came back");
        // The same timer, its deadline moved: a quick future finishes, a slow one fails at
        // its own deadline, not the first one's.
        let quick = timer.bound(Duration::from_secs(5), async { 7 });
        assert_eq!(quick.await.unwrap(), 7);
        let started = Instant::now();
        let sleeper = timer.bound(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_secs(3)),
        );
        assert!(sleeper.await.is_ok(), "3 s is within 5 s");
        let late = timer.bound(
            Duration::from_secs(5),
            tokio::time::sleep(Duration::from_secs(6)),
        );
        assert!(late.await.is_err(), "6 s is past 5 s");
        assert_eq!(started.elapsed(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_futures_each_have_a_deadline() {
        let timer = ResponseTimer::default();
        let (first, second) = tokio::join!(
            timer.bound(
                Duration::from_secs(2),
                tokio::time::sleep(Duration::from_secs(1))
            ),
            timer.bound(
                Duration::from_secs(2),
                tokio::time::sleep(Duration::from_secs(3))
            ),
        );
        assert!(first.is_ok());
        assert!(second.is_err());
    }
}
