//! Scenario tests of the Raft crate, each on its own glommio executor (the runtime adapter's
//! `block_on`) over ext4 directories under `target/` (tmpfs would drop O_DIRECT).

mod cluster_tests;
mod log_store_tests;
mod rpc_tests;
mod rpc_wire_tests;

use crate::runtime::GlommioRuntime;
use openraft::AsyncRuntime;
use rmq_storage::write_varlong as put_varint;
use rmq_storage::{probe_direct_io, LogConfig, PartitionLog};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// A fresh scratch directory for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tmp-raft-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// Runs `test` on a new glommio executor with a probed scratch directory, then removes it.
fn run<F, Fut>(name: &str, test: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = test_dir(name);
    let mut runtime = GlommioRuntime::new(1);
    runtime.block_on(async {
        probe_direct_io(&dir).await.expect("direct IO probe");
        test(dir.clone()).await;
    });
    let _ = std::fs::remove_dir_all(dir);
}

/// Small segments so tests cross segment boundaries.
fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

async fn open_log(dir: &Path) -> Rc<PartitionLog> {
    PartitionLog::open(dir.to_path_buf(), log_config())
        .await
        .expect("open partition log")
}

/// A produced RecordBatch v2 (base offset 0, no producer) with `records` records whose values
/// are `tag` repeated.
fn produced_batch(records: i32, tag: u8) -> bytes::Bytes {
    let mut buf = Vec::new();
    buf.extend_from_slice(&0i64.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&(-1i32).to_be_bytes());
    buf.push(2);
    buf.extend_from_slice(&0u32.to_be_bytes());
    buf.extend_from_slice(&0i16.to_be_bytes());
    buf.extend_from_slice(&(records - 1).to_be_bytes());
    buf.extend_from_slice(&1_000i64.to_be_bytes());
    buf.extend_from_slice(&1_000i64.to_be_bytes());
    buf.extend_from_slice(&(-1i64).to_be_bytes());
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf.extend_from_slice(&(-1i32).to_be_bytes());
    buf.extend_from_slice(&records.to_be_bytes());
    for delta in 0..records {
        let mut body = vec![0u8];
        put_varint(0, &mut body);
        put_varint(i64::from(delta), &mut body);
        put_varint(-1, &mut body);
        put_varint(8, &mut body);
        body.extend(std::iter::repeat_n(tag, 8));
        put_varint(0, &mut body);
        put_varint(body.len() as i64, &mut buf);
        buf.extend_from_slice(&body);
    }
    let length = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&buf[21..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    bytes::Bytes::from(buf)
}

/// Every stored batch header of `log`, from its start to its end.
async fn stored_headers(log: &PartitionLog) -> Vec<rmq_storage::BatchHeader> {
    let mut headers = Vec::new();
    let mut offset = log.log_start_offset().0;
    let end = log.log_end_offset().0;
    log.wait_written(rmq_storage::Offset(end - 1))
        .await
        .expect("written");
    while offset < end {
        let bytes = log
            .read_uncommitted(rmq_storage::Offset(offset), 1 << 20)
            .await
            .expect("read");
        for header in rmq_storage::validate_stored_batches(&bytes, 1 << 20).expect("valid") {
            offset = header.last_offset() + 1;
            headers.push(header);
        }
    }
    headers
}
