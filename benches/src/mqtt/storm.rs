//! Connection storm: workers open connections (TCP + CONNECT -> CONNACK) at a fixed total rate
//! or as fast as they can; connect latency is measured from each connection's intended start,
//! so a slow broker cannot hide behind a slowed-down schedule.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Result;
use bytes::BytesMut;

use super::codec::{self, Version};
use super::conn::Conn;
use super::publisher::MAX_IDLE_WAIT;
use crate::report::{Clock, LocalHist, Metrics};

/// First connection errors printed (the rest are only counted).
pub const MAX_PRINTED_ERRORS: u64 = 5;

pub struct Storm {
    pub addr: String,
    pub version: Version,
    pub run_id: String,
    pub total: u64,
    /// Connections per second over all workers; None = max.
    pub rate: Option<f64>,
    pub hold: bool,
    pub start_us: u64,
    /// Next connection index to claim.
    pub next: AtomicU64,
    /// Held connections (at most `total`, which the workload bounds).
    pub held: Mutex<Vec<TcpStream>>,
    pub failed: AtomicU64,
}

pub fn spawn(
    storm: Arc<Storm>,
    clock: Clock,
    metrics: Arc<Metrics>,
    id: usize,
) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name(format!("mqtt-storm-{id}"))
        .spawn(move || worker(&storm, clock, &metrics))?)
}

fn worker(s: &Storm, clock: Clock, metrics: &Metrics) {
    let mut local = LocalHist::new();
    let mut out = BytesMut::new();
    while !metrics.stopped() {
        let k = s.next.fetch_add(1, Ordering::Relaxed);
        if k >= s.total {
            break;
        }
        let intended = match s.rate {
            Some(r) => s.start_us + (k as f64 * 1e6 / r) as u64,
            None => clock.now_us(),
        };
        let at = clock.instant_of(intended);
        while Instant::now() < at && !metrics.stopped() {
            std::thread::sleep(
                at.saturating_duration_since(Instant::now())
                    .min(MAX_IDLE_WAIT),
            );
        }
        if metrics.stopped() {
            break;
        }
        match Conn::open(&s.addr, s.version, &format!("rb{}c{k}", s.run_id)) {
            Ok(c) => {
                local.record(clock.now_us().saturating_sub(intended));
                metrics.sent_msgs.fetch_add(1, Ordering::Relaxed);
                if s.hold {
                    if let Ok(mut h) = s.held.lock() {
                        h.push(c.stream);
                    }
                } else {
                    out.clear();
                    if codec::disconnect(s.version, &mut out).is_ok() {
                        let mut st = c.stream;
                        let _ = st.write_all(&out);
                    }
                }
            }
            Err(e) => {
                let n = s.failed.fetch_add(1, Ordering::Relaxed);
                metrics.pub_errors.fetch_add(1, Ordering::Relaxed);
                if n < MAX_PRINTED_ERRORS {
                    eprintln!("connection {k}: {e:#}");
                }
            }
        }
        if local.due() {
            metrics.merge_connect(&mut local);
        }
    }
    metrics.merge_connect(&mut local);
}

/// End of the storm: DISCONNECT and close every held connection.
pub fn close_all(s: &Storm) {
    let mut out = BytesMut::new();
    if codec::disconnect(s.version, &mut out).is_err() {
        out.clear();
    }
    if let Ok(mut h) = s.held.lock() {
        for mut st in h.drain(..) {
            let _ = st.write_all(&out);
        }
    }
}
