//! The per-shard request memory budget: a request reserves its frame size before its body is
//! read, so past the budget connections stop reading (back-pressure) instead of allocating.
//! Outstanding reservations double as the shard's in-flight request count for shutdown.

use std::cell::Cell;
use std::rc::Rc;

use glommio::sync::{Semaphore, StaticPermit};

pub struct RequestBudget {
    semaphore: Rc<Semaphore>,
    in_flight: Rc<Cell<usize>>,
    capacity_bytes: usize,
}

/// Memory held by one request; returned to the budget when dropped.
pub struct RequestPermit {
    _permit: Option<StaticPermit>,
    in_flight: Rc<Cell<usize>>,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let count = self.in_flight.get();
        assert!(count > 0, "request permit released twice");
        self.in_flight.set(count - 1);
    }
}

impl RequestBudget {
    pub fn new(capacity_bytes: usize) -> RequestBudget {
        RequestBudget {
            semaphore: Rc::new(Semaphore::new(capacity_bytes as u64)),
            in_flight: Rc::new(Cell::new(0)),
            capacity_bytes,
        }
    }

    /// Waits until `size_bytes` fit. Callers cap `size_bytes` at `socket.request.max.bytes`,
    /// which the config guarantees is within the capacity.
    pub async fn reserve(&self, size_bytes: usize) -> RequestPermit {
        assert!(
            size_bytes <= self.capacity_bytes,
            "request larger than the whole budget"
        );
        self.in_flight.set(self.in_flight.get() + 1);
        // acquire fails only once the semaphore is closed, which we never do.
        let permit = self
            .semaphore
            .acquire_static_permit(size_bytes as u64)
            .await
            .ok();
        RequestPermit {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        }
    }

    /// Requests reserved and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get()
    }
}
