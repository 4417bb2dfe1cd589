//! Single-value broadcast channel for one thread (openraft's `Watch`): receivers see the latest
//! value; each tracks the version it has seen, so `changed` returns at once for an unseen value
//! (Tokio's semantics, which openraft's wait loops rely on).
//!
//! Concurrency contract: `Rc` shared state. `borrow_watched` hands out a `RefCell` borrow;
//! holding it across `.await` or while sending panics (Tokio would deadlock instead).

use openraft::rt::watch::{RecvError, SendError};
use openraft::rt::{Watch, WatchReceiver, WatchSender};
use openraft::{OptionalSend, OptionalSync};
use std::cell::{Cell, Ref, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Shared<T> {
    value: RefCell<T>,
    /// Bumped by every send; receivers compare it with the version they saw.
    version: Cell<u64>,
    senders: Cell<usize>,
    receivers: Cell<usize>,
    waiting_receivers: RefCell<Vec<Waker>>,
}

impl<T> Shared<T> {
    fn publish(&self) {
        self.version.set(self.version.get() + 1);
        self.wake_receivers();
    }

    fn wake_receivers(&self) {
        let wakers = std::mem::take(&mut *self.waiting_receivers.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The `Watch` implementation of `GlommioRuntime`.
pub struct LocalWatch;

pub struct LocalWatchSender<T> {
    shared: Rc<Shared<T>>,
}

pub struct LocalWatchReceiver<T> {
    shared: Rc<Shared<T>>,
    seen_version: u64,
}

impl Watch for LocalWatch {
    type Sender<T: OptionalSend + OptionalSync> = LocalWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = LocalWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(Shared {
            value: RefCell::new(init),
            version: Cell::new(0),
            senders: Cell::new(1),
            receivers: Cell::new(1),
            waiting_receivers: RefCell::new(Vec::new()),
        });
        (
            LocalWatchSender {
                shared: shared.clone(),
            },
            LocalWatchReceiver {
                shared,
                seen_version: 0,
            },
        )
    }
}

impl<T> Clone for LocalWatchSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.set(self.shared.senders.get() + 1);
        LocalWatchSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for LocalWatchSender<T> {
    fn drop(&mut self) {
        let senders = self.shared.senders.get();
        assert!(senders > 0);
        self.shared.senders.set(senders - 1);
        if senders == 1 {
            self.shared.wake_receivers();
        }
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<LocalWatch, T> for LocalWatchSender<T> {
    fn send(&self, value: T) -> Result<(), SendError<T>> {
        if self.shared.receivers.get() == 0 {
            return Err(SendError(value));
        }
        *self.shared.value.borrow_mut() = value;
        self.shared.publish();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = modify(&mut self.shared.value.borrow_mut());
        if modified {
            self.shared.publish();
        }
        modified
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn subscribe(&self) -> LocalWatchReceiver<T> {
        self.shared.receivers.set(self.shared.receivers.get() + 1);
        LocalWatchReceiver {
            shared: self.shared.clone(),
            seen_version: self.shared.version.get(),
        }
    }
}

impl<T> Clone for LocalWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.set(self.shared.receivers.get() + 1);
        LocalWatchReceiver {
            shared: self.shared.clone(),
            seen_version: self.seen_version,
        }
    }
}

impl<T> Drop for LocalWatchReceiver<T> {
    fn drop(&mut self) {
        let receivers = self.shared.receivers.get();
        assert!(receivers > 0);
        self.shared.receivers.set(receivers - 1);
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<LocalWatch, T> for LocalWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        poll_fn(|cx| {
            let version = self.shared.version.get();
            if version != self.seen_version {
                self.seen_version = version;
                return Poll::Ready(Ok(()));
            }
            if self.shared.senders.get() == 0 {
                return Poll::Ready(Err(RecvError(())));
            }
            let mut waiting = self.shared.waiting_receivers.borrow_mut();
            if !waiting.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn borrow_and_update(&mut self) -> Ref<'_, T> {
        self.seen_version = self.shared.version.get();
        self.shared.value.borrow()
    }
}
