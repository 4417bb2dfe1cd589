//! MQTT hot paths: PUBLISH encode and decode on mqttbytes, 3.1.1 (v4) and 5.0 (v5), QoS 0/1,
//! 100-byte and 1 KiB payloads; topic-filter matching in the broker's subscription trie.
//!
//!     cargo bench -p rmq-bench --bench mqtt

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqttbytes::{v4, v5, QoS};
use rmq_protocols::mqtt::topic::matches;
use rmq_protocols::mqtt::trie::SubscriptionTrie;

/// mqttbytes' frame cap for the decode calls (the payload sizes here are far below it).
const MAX_PACKET_BYTES: usize = 1024 * 1024;
const TOPIC: &str = "sensors/building-7/floor-3/room-12/temperature";

fn cases() -> Vec<(&'static str, QoS, usize)> {
    vec![
        ("qos0_100B", QoS::AtMostOnce, 100),
        ("qos1_100B", QoS::AtLeastOnce, 100),
        ("qos1_1KiB", QoS::AtLeastOnce, 1024),
    ]
}

fn publish_v4(c: &mut Criterion) {
    let mut g = c.benchmark_group("mqtt_v4_publish");
    for (name, qos, size) in cases() {
        let mut p = v4::Publish::from_bytes(TOPIC, qos, Bytes::from(vec![7u8; size]));
        p.pkid = if qos == QoS::AtMostOnce { 0 } else { 42 };
        let mut wire = BytesMut::new();
        p.write(&mut wire).expect("encode");
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("encode_{name}"), |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                black_box(p.write(&mut out).expect("encode"));
            })
        });
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                black_box(v4::read(&mut buf, MAX_PACKET_BYTES).expect("decode"))
            })
        });
    }
    g.finish();
}

fn publish_v5(c: &mut Criterion) {
    let mut g = c.benchmark_group("mqtt_v5_publish");
    for (name, qos, size) in cases() {
        let mut p = v5::Publish::from_bytes(TOPIC, qos, Bytes::from(vec![7u8; size]));
        p.pkid = if qos == QoS::AtMostOnce { 0 } else { 42 };
        let mut wire = BytesMut::new();
        p.write(&mut wire).expect("encode");
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("encode_{name}"), |b| {
            let mut out = BytesMut::with_capacity(4096);
            b.iter(|| {
                out.clear();
                black_box(p.write(&mut out).expect("encode"));
            })
        });
        g.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                black_box(v5::read(&mut buf, MAX_PACKET_BYTES).expect("decode"))
            })
        });
    }
    g.finish();
}

/// A fleet-shaped trie: `devices` devices each subscribed to their own command topic, plus
/// per-building `+` wildcards and a few `#` monitors; `levels` are like
/// `fleet/b{building}/d{device}/cmd`.
fn fleet_trie(devices: u32) -> SubscriptionTrie<u32, u8> {
    let mut trie = SubscriptionTrie::default();
    for d in 0..devices {
        trie.insert(&format!("fleet/b{}/d{d}/cmd", d % 100), d, 0);
    }
    for b in 0..100u32 {
        trie.insert(&format!("fleet/b{b}/+/telemetry"), devices + b, 0);
    }
    trie.insert("fleet/#", devices + 1_000, 0);
    trie.insert("$SYS/#", devices + 1_001, 0);
    trie.insert("+/+/+/alarm", devices + 1_002, 0);
    trie
}

fn topic_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("mqtt_topic_match");
    g.throughput(Throughput::Elements(1));
    for devices in [1_000u32, 100_000] {
        let trie = fleet_trie(devices);
        for (name, topic) in [
            ("exact", "fleet/b7/d507/cmd"),
            ("wildcards", "fleet/b7/d507/telemetry"),
            ("no_subscriber", "other/b7/d507/x"),
        ] {
            g.bench_function(format!("trie_{devices}_{name}"), |b| {
                b.iter(|| {
                    let mut hits = 0u32;
                    trie.for_each_match(black_box(topic), |_, _| hits += 1);
                    black_box(hits)
                })
            });
        }
    }
    g.bench_function("single_filter_plus_hash", |b| {
        b.iter(|| {
            black_box(matches(
                black_box("fleet/+/+/#"),
                black_box("fleet/b7/d507/telemetry"),
            ))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = publish_v4, publish_v5, topic_match
}
criterion_main!(benches);
