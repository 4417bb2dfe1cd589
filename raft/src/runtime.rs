//! openraft's `AsyncRuntime` on glommio: Raft tasks are glommio tasks of the shard that owns the
//! group (`glommio::spawn_local`), timers are glommio timers, and the channels and the mutex are
//! single-threaded (`Rc` + `RefCell`), since with openraft's `single-threaded` feature nothing
//! crosses a thread. No Tokio anywhere.
//!
//! Concurrency contract: everything here is `!Send` and must be used inside a glommio
//! `LocalExecutor` (spawning, sleeping and timeouts panic outside one, as glommio's own calls
//! do). Waker lists are drained on every state change, so a dropped future costs at most one
//! spurious wake-up.

mod mpsc;
mod mutex;
mod oneshot;
mod watch;

pub use mpsc::{LocalMpsc, LocalMpscReceiver, LocalMpscSender, LocalMpscWeakSender};
pub use mutex::{LocalMutex, LocalMutexGuard};
pub use oneshot::{LocalOneshot, LocalOneshotReceiver, LocalOneshotSender, OneshotCanceled};
pub use watch::{LocalWatch, LocalWatchReceiver, LocalWatchSender};

use crate::constants::{RUNTIME_IO_MEMORY_BYTES, SLEEP_DURATION_MAX};
use glommio::timer::Timer;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use openraft::rt::OptionalSend;
use openraft::AsyncRuntime;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// openraft's runtime: the glommio executor of the current thread.
///
/// openraft itself only uses the associated functions (spawn, sleep, channels) and never builds
/// a runtime; `new` / `block_on` exist for tests, which run on a fresh `LocalExecutor`.
pub struct GlommioRuntime {
    executor: LocalExecutor,
    /// The executor's reactor tick is spawned (by the first `block_on`).
    ticking: bool,
}

impl fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlommioRuntime")
            .field("executor_id", &self.executor.id())
            .finish()
    }
}

/// A spawned task that ended without a value: glommio cancelled it (its executor stopped).
/// glommio does not catch panics (a panicking task takes its executor down), so this is never
/// a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCancelled;

impl fmt::Display for TaskCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("glommio task was cancelled")
    }
}

impl std::error::Error for TaskCancelled {}

/// A detached glommio task; dropping the handle does not cancel it (Tokio's semantics, which
/// openraft relies on). Boxed because glommio's handle is `Unpin` only for `Unpin` outputs.
pub struct JoinHandle<T> {
    inner: Pin<Box<glommio::task::JoinHandle<T>>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, TaskCancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner
            .as_mut()
            .poll(cx)
            .map(|output| output.ok_or(TaskCancelled))
    }
}

/// A glommio timer that resolves to `()`.
pub struct Sleep {
    timer: Timer,
}

impl Sleep {
    fn new(duration: Duration) -> Sleep {
        Sleep {
            timer: Timer::new(duration.min(SLEEP_DURATION_MAX)),
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

/// A timeout elapsed before the future completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

/// `future` raced against a glommio timer; the future is polled first, so a future that is
/// ready at the deadline still wins. Boxed to pin it without unsafe projection (one allocation
/// per timeout, which openraft takes per RPC, not per entry).
pub struct Timeout<F: Future> {
    future: Pin<Box<F>>,
    timer: Timer,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        Pin::new(&mut self.timer).poll(cx).map(|_| Err(Elapsed))
    }
}

fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = TaskCancelled;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        JoinHandle {
            inner: Box::pin(glommio::spawn_local(future).detach()),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep::new(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep::new(until(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            timer: Timer::new(duration.min(SLEEP_DURATION_MAX)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(_join_error: &Self::JoinError) -> bool {
        false
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = LocalMpsc;
    type Watch = LocalWatch;
    type Oneshot = LocalOneshot;
    type Mutex<T: OptionalSend + 'static> = LocalMutex<T>;

    /// A fresh unbound executor on the calling thread (tests only; `threads` is ignored: one
    /// executor is one thread).
    fn new(_threads: usize) -> Self {
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(RUNTIME_IO_MEMORY_BYTES)
            .make()
            .expect("a glommio executor for the test runtime");
        GlommioRuntime {
            executor,
            ticking: false,
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        let spawn_tick = !std::mem::replace(&mut self.ticking, true);
        self.executor.run(async move {
            if spawn_tick {
                rmq_storage::reactor_tick::spawn_reactor_tick();
            }
            future.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::GlommioRuntime;

    #[test]
    fn glommio_runtime_passes_openraft_runtime_suite() {
        openraft::testing::runtime::Suite::<GlommioRuntime>::test_all();
    }
}
