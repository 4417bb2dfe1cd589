//! Bounded multi-producer single-consumer channel for one thread (openraft's `Mpsc`).
//!
//! Concurrency contract: `Rc` shared state, no borrow held across a return to the executor.
//! Senders blocked on a full queue park their wakers; every receive drains and wakes them all
//! (each re-checks for room), so a cancelled send never strands a later one.

use openraft::rt::{Mpsc, MpscReceiver, MpscSender, MpscWeakSender, SendError, TryRecvError};
use openraft::OptionalSend;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Shared<T> {
    queue: RefCell<VecDeque<T>>,
    capacity: usize,
    /// Strong senders alive; the channel closes for the receiver when it reaches 0.
    senders: Cell<usize>,
    receiver_alive: Cell<bool>,
    receiver_waker: RefCell<Option<Waker>>,
    blocked_senders: RefCell<Vec<Waker>>,
}

impl<T> Shared<T> {
    fn wake_receiver(&self) {
        if let Some(waker) = self.receiver_waker.borrow_mut().take() {
            waker.wake();
        }
    }

    fn wake_blocked_senders(&self) {
        let wakers = std::mem::take(&mut *self.blocked_senders.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }

    fn pop(&self) -> Option<T> {
        let value = self.queue.borrow_mut().pop_front();
        if value.is_some() {
            self.wake_blocked_senders();
        }
        value
    }
}

/// The `Mpsc` implementation of `GlommioRuntime`.
pub struct LocalMpsc;

pub struct LocalMpscSender<T> {
    shared: Rc<Shared<T>>,
}

pub struct LocalMpscReceiver<T> {
    shared: Rc<Shared<T>>,
}

pub struct LocalMpscWeakSender<T> {
    shared: Rc<Shared<T>>,
}

impl Mpsc for LocalMpsc {
    type Sender<T: OptionalSend> = LocalMpscSender<T>;
    type Receiver<T: OptionalSend> = LocalMpscReceiver<T>;
    type WeakSender<T: OptionalSend> = LocalMpscWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        assert!(buffer > 0, "a bounded channel needs room for one message");
        let shared = Rc::new(Shared {
            queue: RefCell::new(VecDeque::with_capacity(buffer.min(1024))),
            capacity: buffer,
            senders: Cell::new(1),
            receiver_alive: Cell::new(true),
            receiver_waker: RefCell::new(None),
            blocked_senders: RefCell::new(Vec::new()),
        });
        (
            LocalMpscSender {
                shared: shared.clone(),
            },
            LocalMpscReceiver { shared },
        )
    }
}

impl<T> Clone for LocalMpscSender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.set(self.shared.senders.get() + 1);
        LocalMpscSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for LocalMpscSender<T> {
    fn drop(&mut self) {
        let senders = self.shared.senders.get();
        assert!(senders > 0);
        self.shared.senders.set(senders - 1);
        if senders == 1 {
            self.shared.wake_receiver();
        }
    }
}

impl<T: OptionalSend> MpscSender<LocalMpsc, T> for LocalMpscSender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        let shared = self.shared.clone();
        let mut msg = Some(msg);
        poll_fn(move |cx| {
            let value = msg.take().expect("send polled after it completed");
            if !shared.receiver_alive.get() {
                return Poll::Ready(Err(SendError(value)));
            }
            let mut queue = shared.queue.borrow_mut();
            if queue.len() < shared.capacity {
                queue.push_back(value);
                drop(queue);
                shared.wake_receiver();
                return Poll::Ready(Ok(()));
            }
            drop(queue);
            msg = Some(value);
            shared.blocked_senders.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
    }

    fn downgrade(&self) -> LocalMpscWeakSender<T> {
        LocalMpscWeakSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Clone for LocalMpscWeakSender<T> {
    fn clone(&self) -> Self {
        LocalMpscWeakSender {
            shared: self.shared.clone(),
        }
    }
}

impl<T: OptionalSend> MpscWeakSender<LocalMpsc, T> for LocalMpscWeakSender<T> {
    fn upgrade(&self) -> Option<LocalMpscSender<T>> {
        let senders = self.shared.senders.get();
        if senders == 0 {
            return None;
        }
        self.shared.senders.set(senders + 1);
        Some(LocalMpscSender {
            shared: self.shared.clone(),
        })
    }
}

impl<T> Drop for LocalMpscReceiver<T> {
    fn drop(&mut self) {
        self.shared.receiver_alive.set(false);
        self.shared.wake_blocked_senders();
    }
}

impl<T: OptionalSend> MpscReceiver<T> for LocalMpscReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        poll_fn(move |cx| {
            if let Some(value) = self.shared.pop() {
                return Poll::Ready(Some(value));
            }
            if self.shared.senders.get() == 0 {
                return Poll::Ready(None);
            }
            *self.shared.receiver_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        match self.shared.pop() {
            Some(value) => Ok(value),
            None if self.shared.senders.get() == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }
}
