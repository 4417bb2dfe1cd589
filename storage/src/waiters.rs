//! A list of tasks waiting for a condition on the partition log (data written, data durable,
//! writer has work, writer stopped).
//!
//! Concurrency contract: single-threaded. Each waiting future owns one slot and frees it when
//! it completes or is dropped (e.g. a Fetch long-poll timing out), so the list never holds more
//! wakers than there are live futures. `wake_all` never holds a borrow while waking.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Slot states: `None` = free, `Some(None)` = taken but not parked, `Some(Some(w))` = parked.
#[derive(Default)]
pub(crate) struct WaiterList {
    slots: RefCell<Vec<Option<Option<Waker>>>>,
    free: RefCell<Vec<usize>>,
}

impl WaiterList {
    /// A future that completes once `ready()` returns true. `ready` must only take short
    /// borrows of shared state.
    pub(crate) fn wait_until<F: FnMut() -> bool>(&self, ready: F) -> WaitUntil<'_, F> {
        WaitUntil {
            list: self,
            ready,
            slot: None,
        }
    }

    /// Wakes every parked waiter; each re-checks its condition when polled.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = {
            let mut slots = self.slots.borrow_mut();
            slots
                .iter_mut()
                .filter_map(|slot| slot.as_mut().and_then(Option::take))
                .collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Waiters currently holding a slot (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn live_count(&self) -> usize {
        self.slots
            .borrow()
            .iter()
            .filter(|slot| slot.is_some())
            .count()
    }

    fn park(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.slots.borrow_mut();
        let index = match *slot {
            Some(index) => index,
            None => {
                let index = match self.free.borrow_mut().pop() {
                    Some(index) => index,
                    None => {
                        slots.push(None);
                        slots.len() - 1
                    }
                };
                *slot = Some(index);
                index
            }
        };
        assert!(index < slots.len());
        slots[index] = Some(Some(waker.clone()));
    }

    fn release(&self, index: usize) {
        let mut slots = self.slots.borrow_mut();
        assert!(slots[index].is_some(), "waiter slot released twice");
        slots[index] = None;
        self.free.borrow_mut().push(index);
    }
}

pub(crate) struct WaitUntil<'a, F: FnMut() -> bool> {
    list: &'a WaiterList,
    ready: F,
    slot: Option<usize>,
}

impl<F: FnMut() -> bool> Unpin for WaitUntil<'_, F> {}

impl<F: FnMut() -> bool> Future for WaitUntil<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if (this.ready)() {
            if let Some(index) = this.slot.take() {
                this.list.release(index);
            }
            return Poll::Ready(());
        }
        this.list.park(&mut this.slot, context.waker());
        Poll::Pending
    }
}

impl<F: FnMut() -> bool> Drop for WaitUntil<'_, F> {
    fn drop(&mut self) {
        if let Some(index) = self.slot.take() {
            self.list.release(index);
        }
    }
}
