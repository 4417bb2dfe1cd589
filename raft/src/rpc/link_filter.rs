//! Fault injection: a set of cut directed links (from node, to node) shared by every node of a
//! test cluster. The client consults it before sending (a cut link fails the request with
//! `Unreachable`), the server on receipt of each request and before writing its response (a
//! cut link drops the frame silently, so the caller sees a timeout, as on a real partition).
//!
//! Concurrency contract: `Send + Sync`; clones share one set behind a `RwLock` (nodes run on
//! different threads). Reads are one lock per frame, which is only paid when a filter is set.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

#[derive(Clone, Debug, Default)]
pub struct LinkFilter {
    cut: Arc<RwLock<BTreeSet<(u64, u64)>>>,
}

impl LinkFilter {
    pub fn new() -> LinkFilter {
        LinkFilter::default()
    }

    /// Whether a frame from `from` may reach `to`.
    pub fn allows(&self, from: u64, to: u64) -> bool {
        !self
            .cut
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(from, to))
    }

    /// Cuts the link between `a` and `b`, both directions.
    pub fn cut(&self, a: u64, b: u64) {
        let mut cut = self.cut.write().unwrap_or_else(PoisonError::into_inner);
        cut.insert((a, b));
        cut.insert((b, a));
    }

    /// Cuts every link between `node` and each of `others`.
    pub fn isolate(&self, node: u64, others: &[u64]) {
        for other in others {
            self.cut(node, *other);
        }
    }

    /// Heals the link between `a` and `b`, both directions.
    pub fn heal(&self, a: u64, b: u64) {
        let mut cut = self.cut.write().unwrap_or_else(PoisonError::into_inner);
        cut.remove(&(a, b));
        cut.remove(&(b, a));
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        self.cut
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
