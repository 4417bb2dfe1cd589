//! Cross-shard submit round trip: one glommio executor sends a `ShardOp` to another over the
//! same bounded flume channel the broker's mesh uses (`MESH_CHANNEL_CAPACITY`), the other
//! executor's receive loop answers on the op's own reply channel, and the sender awaits the
//! answer. This is the fixed cost a request pays when its partition lives on another shard
//! (the handler's own work excluded). Two threads: the sender on the bench thread, the
//! receiver on a spawned executor; both unpinned (the machine may have 2 cores only).
//!
//!     cargo bench -p rmq-bench --bench shard
//!
//! `in_flight_N` keeps N ops outstanding (pipelined, as many connections on one shard do) and
//! reports the time per op.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use rmq_broker::constants::MESH_CHANNEL_CAPACITY;
use rmq_broker::shard::ShardOp;
use rmq_protocols::kernel::{KernelError, TopicPartition};

type ListOffsetReply = Result<(i64, i64), KernelError>;

fn list_offset_op(reply: flume::Sender<ListOffsetReply>) -> ShardOp {
    ShardOp::ListOffset {
        partition: TopicPartition {
            topic: "bench".to_string(),
            partition: 3,
        },
        timestamp: -1,
        reply,
    }
}

/// Sends `iters` ops with at most `in_flight` outstanding; returns the elapsed time.
async fn round_trips(mesh: &flume::Sender<ShardOp>, iters: u64, in_flight: u64) -> Duration {
    let start = Instant::now();
    let mut pending: VecDeque<flume::Receiver<ListOffsetReply>> = VecDeque::new();
    for _ in 0..iters {
        if pending.len() as u64 >= in_flight {
            let reply = pending.pop_front().expect("pending reply");
            reply.recv_async().await.expect("reply").expect("ok");
        }
        let (sender, receiver) = flume::bounded(1);
        mesh.send_async(list_offset_op(sender))
            .await
            .expect("mesh send");
        pending.push_back(receiver);
    }
    for reply in pending {
        reply.recv_async().await.expect("reply").expect("ok");
    }
    start.elapsed()
}

fn round_trip(c: &mut Criterion) {
    let (mesh, receiver) = flume::bounded::<ShardOp>(MESH_CHANNEL_CAPACITY);
    let remote = LocalExecutorBuilder::new(Placement::Unbound)
        .name("bench-shard-1")
        .spawn(move || async move {
            while let Ok(op) = receiver.recv_async().await {
                if let ShardOp::ListOffset { reply, .. } = op {
                    let _ = reply.send_async(Ok((0, 0))).await;
                }
            }
        })
        .expect("spawn remote shard");
    let local: LocalExecutor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor");

    let mut g = c.benchmark_group("cross_shard_round_trip");
    g.throughput(Throughput::Elements(1));
    for in_flight in [1u64, 16, 256] {
        g.bench_function(format!("in_flight_{in_flight}"), |b| {
            b.iter_custom(|iters| local.run(round_trips(&mesh, iters, in_flight)))
        });
    }
    g.finish();
    drop(mesh);
    remote.join().expect("remote shard exits");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = round_trip
}
criterion_main!(benches);
