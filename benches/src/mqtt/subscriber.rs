//! One subscriber = one connection = one thread: reads PUBLISHes, answers PUBACK (QoS 1) or
//! PUBREC/PUBCOMP (QoS 2), and records end-to-end latency from the intended send time in the
//! first 8 payload bytes.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use bytes::BytesMut;

use super::codec::{self, Incoming, Version, KEEP_ALIVE_S};
use super::conn::{Conn, POLL_INTERVAL};
use crate::report::{Clock, LocalHist, Metrics};

#[derive(Debug, Clone)]
pub struct SubscriberConfig {
    pub addr: String,
    pub version: Version,
    pub client_id: String,
    pub filters: Vec<String>,
    pub qos: u8,
}

/// Connect and subscribe (so every subscription is in place before any publisher starts),
/// then read on a thread until `metrics.stop_consumers`.
pub fn spawn(
    cfg: SubscriberConfig,
    clock: Clock,
    metrics: Arc<Metrics>,
    id: usize,
) -> Result<JoinHandle<()>> {
    let t0 = clock.now_us();
    let mut conn = Conn::open(&cfg.addr, cfg.version, &cfg.client_id)
        .with_context(|| format!("subscriber {}", cfg.client_id))?;
    let mut l = LocalHist::new();
    l.record(clock.now_us().saturating_sub(t0));
    metrics.merge_connect(&mut l);
    conn.subscribe(&cfg.filters, cfg.qos)
        .with_context(|| format!("subscriber {}", cfg.client_id))?;
    conn.stream.set_read_timeout(Some(POLL_INTERVAL))?;
    Ok(std::thread::Builder::new()
        .name(format!("mqtt-sub-{id}"))
        .spawn(move || {
            if let Err(e) = run(conn, &cfg, clock, &metrics) {
                eprintln!("subscriber {}: {e:#}", cfg.client_id);
                metrics.consumer_errors.fetch_add(1, Ordering::Relaxed);
            }
        })?)
}

fn run(mut conn: Conn, cfg: &SubscriberConfig, clock: Clock, metrics: &Metrics) -> Result<()> {
    let version = conn.version;
    let mut local = LocalHist::new();
    let mut out = BytesMut::new();
    let mut last_write = Instant::now();
    let ping_after = Duration::from_secs(u64::from(KEEP_ALIVE_S) / 2);
    while !metrics.consumers_stopped() {
        if !conn.fill()? {
            return Err(anyhow!("broker closed the connection"));
        }
        let now = clock.now_us();
        let (mut n, mut bytes) = (0u64, 0u64);
        loop {
            let p = match conn.try_decode() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            match p {
                Incoming::Publish { qos, pkid, payload } => {
                    n += 1;
                    bytes += payload.len() as u64;
                    if let Some(ts) = payload.get(..8).and_then(|s| s.try_into().ok()) {
                        local.record(now.saturating_sub(u64::from_be_bytes(ts)));
                    }
                    match qos {
                        1 => codec::puback(version, &mut out, pkid)?,
                        2 => codec::pubrec(version, &mut out, pkid)?,
                        _ => {}
                    }
                }
                Incoming::PubRel { pkid } => codec::pubcomp(version, &mut out, pkid)?,
                Incoming::PingResp => {}
                Incoming::Disconnect { code } => {
                    metrics.note_error_code(i16::from(code));
                    return Err(anyhow!("broker sent DISCONNECT (reason {code})"));
                }
                other => {
                    metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("subscriber {}: unexpected {other:?}", cfg.client_id);
                }
            }
        }
        if last_write.elapsed() >= ping_after {
            codec::pingreq(version, &mut out)?;
        }
        if !out.is_empty() {
            conn.stream.write_all(&out).context("writing acks")?;
            out.clear();
            last_write = Instant::now();
        }
        if n > 0 {
            metrics.recv_msgs.fetch_add(n, Ordering::Relaxed);
            metrics.recv_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if local.due() {
            metrics.merge_e2e(&mut local);
        }
    }
    metrics.merge_e2e(&mut local);
    codec::disconnect(version, &mut out)?;
    let _ = conn.stream.write_all(&out);
    Ok(())
}
