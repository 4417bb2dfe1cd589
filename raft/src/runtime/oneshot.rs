//! One-value channel for one thread (openraft's `Oneshot`).
//!
//! Concurrency contract: `Rc` shared state; the receiver is woken when the value arrives or the
//! sender is dropped without sending.

use openraft::rt::{Oneshot, OneshotSender};
use openraft::OptionalSend;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct Shared<T> {
    value: RefCell<Option<T>>,
    sender_alive: Cell<bool>,
    receiver_alive: Cell<bool>,
    receiver_waker: RefCell<Option<Waker>>,
}

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneshotCanceled;

impl fmt::Display for OneshotCanceled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("oneshot sender dropped without sending")
    }
}

impl std::error::Error for OneshotCanceled {}

/// The `Oneshot` implementation of `GlommioRuntime`.
pub struct LocalOneshot;

pub struct LocalOneshotSender<T> {
    shared: Rc<Shared<T>>,
}

pub struct LocalOneshotReceiver<T> {
    shared: Rc<Shared<T>>,
}

impl Oneshot for LocalOneshot {
    type Sender<T: OptionalSend> = LocalOneshotSender<T>;
    type Receiver<T: OptionalSend> = LocalOneshotReceiver<T>;
    type ReceiverError = OneshotCanceled;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(Shared {
            value: RefCell::new(None),
            sender_alive: Cell::new(true),
            receiver_alive: Cell::new(true),
            receiver_waker: RefCell::new(None),
        });
        (
            LocalOneshotSender {
                shared: shared.clone(),
            },
            LocalOneshotReceiver { shared },
        )
    }
}

impl<T> LocalOneshotSender<T> {
    fn wake_receiver(&self) {
        if let Some(waker) = self.shared.receiver_waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl<T: OptionalSend> OneshotSender<T> for LocalOneshotSender<T> {
    fn send(self, value: T) -> Result<(), T> {
        if !self.shared.receiver_alive.get() {
            return Err(value);
        }
        let previous = self.shared.value.borrow_mut().replace(value);
        assert!(previous.is_none(), "a oneshot sender sends once");
        self.wake_receiver();
        Ok(())
    }
}

impl<T> Drop for LocalOneshotSender<T> {
    fn drop(&mut self) {
        self.shared.sender_alive.set(false);
        self.wake_receiver();
    }
}

impl<T> Future for LocalOneshotReceiver<T> {
    type Output = Result<T, OneshotCanceled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(value) = self.shared.value.borrow_mut().take() {
            return Poll::Ready(Ok(value));
        }
        if !self.shared.sender_alive.get() {
            return Poll::Ready(Err(OneshotCanceled));
        }
        *self.shared.receiver_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for LocalOneshotReceiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.set(false);
    }
}
