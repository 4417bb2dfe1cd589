//! Async mutex for one thread (openraft's `Mutex`): the `RefCell` borrow flag is the lock, so
//! the guard is a `RefMut` and no unsafe code is needed.
//!
//! Concurrency contract: a task that finds the lock taken parks its waker; releasing the guard
//! wakes every parked task and the first one polled takes the lock (no fairness promise).

use openraft::rt::Mutex;
use openraft::OptionalSend;
use std::cell::{RefCell, RefMut};
use std::future::{poll_fn, Future};
use std::ops::{Deref, DerefMut};
use std::task::{Poll, Waker};

pub struct LocalMutex<T> {
    value: RefCell<T>,
    waiting: RefCell<Vec<Waker>>,
}

pub struct LocalMutexGuard<'a, T> {
    value: RefMut<'a, T>,
    waiting: &'a RefCell<Vec<Waker>>,
}

impl<T> Deref for LocalMutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for LocalMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for LocalMutexGuard<'_, T> {
    /// The `RefMut` is released right after this body; the woken tasks run later, on this
    /// thread, so they find the lock free.
    fn drop(&mut self) {
        let wakers = std::mem::take(&mut *self.waiting.borrow_mut());
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T: OptionalSend + 'static> Mutex<T> for LocalMutex<T> {
    type Guard<'a>
        = LocalMutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        LocalMutex {
            value: RefCell::new(value),
            waiting: RefCell::new(Vec::new()),
        }
    }

    fn lock(&self) -> impl Future<Output = LocalMutexGuard<'_, T>> + OptionalSend {
        poll_fn(move |cx| match self.value.try_borrow_mut() {
            Ok(value) => Poll::Ready(LocalMutexGuard {
                value,
                waiting: &self.waiting,
            }),
            Err(_) => {
                self.waiting.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}
