//! Starting and stopping a node: load metadata, start one glommio executor per shard, bind
//! the listeners (shard 0 first, so port 0 resolves once and the other shards share that
//! port), print the ready line, and on SIGTERM/SIGINT stop accepting, drain in-flight
//! requests, flush and close every log, and exit.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use rmq_protocols::kernel::{ConfigChange, KernelError, NodeInfo, TopicSpec};
use tracing::{error, info, warn};

use crate::admin_http;
use crate::cluster::replica::ReplicaManager;
use crate::cluster::{ClusterNode, ClusterView};
use crate::config::NodeConfig;
use crate::constants::{
    GROUP_TICK_INTERVAL_MS, LOG_CLEANER_TASK_QUEUE_SHARES, MESH_CHANNEL_CAPACITY,
    METRICS_REFRESH_INTERVAL_MS, OFFSETS_TOPIC_SEGMENT_BYTES, RETENTION_CHECK_INTERVAL_MS,
    SHARD_IO_MEMORY_BYTES, SHUTDOWN_DRAIN_TIMEOUT_MS,
};
use crate::controller::{Controller, ControllerReply, ControllerRequest};
use crate::group::{monotonic_ms, OFFSETS_TOPIC};
use crate::kafka_listener;
use crate::metadata::{self, ClusterMetadata};
use crate::metrics::ShardMetrics;
use crate::mqtt;
use crate::shard::{now_ms, spawn_mesh_receivers, Shard, ShardId, ShardOp};
use rmq_raft::rpc::{LinkFilter, RaftGroups, RpcClient};

/// How long the node waits for every shard to recover its logs and bind its listeners.
const STARTUP_TIMEOUT_S: u64 = 600;
/// The whole shutdown must finish within this; past it the process exits with an error.
const SHUTDOWN_HARD_LIMIT_MS: u64 = 4_800;

/// The port shard 0 bound, handed to the other shards.
type BoundSlot = Arc<(Mutex<Option<Result<SocketAddr, String>>>, Condvar)>;

/// Everything one shard needs to start; cloned into each executor.
#[derive(Clone)]
struct ShardStart {
    config: Arc<NodeConfig>,
    metadata: Arc<ClusterMetadata>,
    mesh: Arc<Mesh>,
    next_shard_id: Arc<AtomicUsize>,
    bound: BoundSlot,
    mqtt_bound: BoundSlot,
    mqtt_ws_bound: BoundSlot,
    /// One per shard, indexed by shard id; the admin HTTP thread reads them.
    metrics: Arc<Vec<Arc<ShardMetrics>>>,
    ready: std::sync::mpsc::Sender<Result<(u16, SocketAddr), String>>,
    shutdown: flume::Receiver<()>,
    /// Shards that wrote their MQTT state at shutdown (see `mqtt::state`).
    mqtt_state_written: Arc<AtomicUsize>,
    /// In a cluster (`--seeds`): what shard 0 publishes about it, and the RPC address it bound.
    cluster_view: Option<Arc<ClusterView>>,
    rpc_bound: BoundSlot,
}

/// The bounded channels between every ordered pair of shards, built before any executor runs.
struct Mesh {
    /// `senders[from][to]`; `None` where `from == to`.
    senders: Vec<Vec<Option<flume::Sender<ShardOp>>>>,
    /// `receivers[to]`: one receiver per other shard.
    receivers: Vec<Vec<flume::Receiver<ShardOp>>>,
}

impl Mesh {
    fn new(shard_count: usize) -> Mesh {
        let mut senders = vec![vec![None; shard_count]; shard_count];
        let mut receivers = vec![Vec::with_capacity(shard_count); shard_count];
        for (from, row) in senders.iter_mut().enumerate() {
            for (to, slot) in row.iter_mut().enumerate() {
                if from != to {
                    let (sender, receiver) = flume::bounded(MESH_CHANNEL_CAPACITY);
                    *slot = Some(sender);
                    receivers[to].push(receiver);
                }
            }
        }
        Mesh { senders, receivers }
    }
}

/// Holds an exclusive lock on the data directory for the life of the process.
pub struct DataDirLock {
    _file: std::fs::File,
}

fn lock_data_dir(config: &NodeConfig) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let path = config.data_dir.join(".lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "data dir {} is in use by another rmq-node (lock {} is held)",
            config.data_dir.display(),
            path.display()
        );
    }
    Ok(DataDirLock { _file: file })
}

/// Refuses a data directory used in the other mode: a single node's topics would vanish
/// under the cluster's (each node's metadata then comes from the controller group), and a
/// cluster node's data names partitions other nodes lead.
fn check_cluster_mode(config: &NodeConfig, metadata: &ClusterMetadata) -> anyhow::Result<()> {
    let clustered = metadata.controller_applied_index > 0 || !metadata.brokers.is_empty();
    if config.seeds.is_empty() && clustered {
        bail!(
            "data dir {} belongs to a cluster node; start it with --seeds (and its --node-id)",
            config.data_dir.display()
        );
    }
    let local_topics = metadata
        .topics
        .keys()
        .filter(|name| !crate::controller::is_node_local_topic(name))
        .count();
    if !config.seeds.is_empty() && !clustered && local_topics > 0 {
        bail!(
            "data dir {} holds {local_topics} topics of a single node; a cluster node needs a \
             data dir of its own (moving topics into a cluster is not supported)",
            config.data_dir.display()
        );
    }
    Ok(())
}

fn load_or_create_metadata(config: &NodeConfig) -> anyhow::Result<ClusterMetadata> {
    if let Some(metadata) = metadata::load(&config.data_dir)? {
        info!(
            topics = metadata.topics.len(),
            version = metadata.version,
            "metadata loaded"
        );
        return Ok(metadata);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let metadata = ClusterMetadata::new(format!("rmq-{nanos:x}"));
    metadata::store(&config.data_dir, &metadata)?;
    info!(cluster_id = %metadata.cluster_id, "new cluster metadata created");
    Ok(metadata)
}

/// Runs the node until SIGTERM/SIGINT. Returns after a clean shutdown.
pub fn run(config: NodeConfig) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&config)?;
    let metadata = Arc::new(load_or_create_metadata(&config)?);
    check_cluster_mode(&config, &metadata)?;
    let config = Arc::new(config);
    let cluster_view = (!config.seeds.is_empty()).then(|| {
        Arc::new(ClusterView::new(
            config.node_id,
            config.raft_election_timeout_ms,
            config.fault_injection.then(LinkFilter::new),
        ))
    });
    let rpc_bound: BoundSlot = Arc::new((Mutex::new(None), Condvar::new()));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = if config.cores <= cpus {
        PoolPlacement::MaxSpread(config.cores, None)
    } else {
        warn!(
            cores = config.cores,
            cpus, "more shards than CPUs: executors run unpinned"
        );
        PoolPlacement::Unbound(config.cores)
    };
    // Installed before any shard runs, so a signal that arrives right after the ready line is
    // handled rather than killing the process.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("cannot install signal handlers")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mqtt_bound: BoundSlot = Arc::new((Mutex::new(None), Condvar::new()));
    let mqtt_ws_bound: BoundSlot = Arc::new((Mutex::new(None), Condvar::new()));
    let (shutdown_tx, shutdown_rx) = flume::bounded(config.cores);
    let shard_metrics: Arc<Vec<Arc<ShardMetrics>>> = Arc::new(
        (0..config.cores)
            .map(|_| Arc::new(ShardMetrics::new()))
            .collect(),
    );
    let start = ShardStart {
        metrics: shard_metrics.clone(),
        config: config.clone(),
        metadata,
        mesh: Arc::new(Mesh::new(config.cores)),
        next_shard_id: Arc::new(AtomicUsize::new(0)),
        mqtt_state_written: Arc::new(AtomicUsize::new(0)),
        bound: Arc::new((Mutex::new(None), Condvar::new())),
        mqtt_bound: mqtt_bound.clone(),
        mqtt_ws_bound: mqtt_ws_bound.clone(),
        ready: ready_tx,
        shutdown: shutdown_rx,
        cluster_view: cluster_view.clone(),
        rpc_bound: rpc_bound.clone(),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("rmq-shard")
        .io_memory(SHARD_IO_MEMORY_BYTES)
        .on_all_shards(move || async move {
            let ready = start.ready.clone();
            if let Err(e) = run_shard(start).await {
                let _ = ready.send(Err(format!("{e:#}")));
                return Err(format!("{e:#}"));
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("cannot start shard executors: {e}"))?;
    let addr = wait_ready(&ready_rx, config.cores)?;
    let mqtt_addr = bound_address(&mqtt_bound)?;
    let mqtt_ws_addr = bound_address(&mqtt_ws_bound)?;
    let admin_addr = admin_http::start(
        config.admin_addr,
        addr,
        shard_metrics.to_vec(),
        cluster_view.clone(),
    )
    .context("--admin-addr")?;
    // The RPC listener exists only in a cluster; a single node's ready line is unchanged.
    let rpc = match &cluster_view {
        Some(_) => format!(" rpc={}", bound_address(&rpc_bound)?),
        None => String::new(),
    };
    println!(
        "rmq-node ready kafka={addr} mqtt={mqtt_addr} mqtt-ws={mqtt_ws_addr} admin={admin_addr}{rpc}"
    );
    use std::io::Write;
    std::io::stdout().flush().ok();
    wait_for_signal(signals, shutdown_tx, config.cores);
    let started = Instant::now();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(SHUTDOWN_HARD_LIMIT_MS));
        error!("shutdown did not finish in time; exiting");
        std::process::exit(1);
    });
    let mut failed = false;
    for result in handles.join_all() {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(error = %e, "shard failed");
                failed = true;
            }
            Err(e) => {
                error!(error = %e, "shard thread failed");
                failed = true;
            }
        }
    }
    if failed {
        bail!("shutdown finished with errors");
    }
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "shutdown complete"
    );
    Ok(())
}

fn wait_ready(
    ready: &std::sync::mpsc::Receiver<Result<(u16, SocketAddr), String>>,
    cores: usize,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(STARTUP_TIMEOUT_S);
    let mut addr = None;
    for _ in 0..cores {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match ready.recv_timeout(remaining) {
            Ok(Ok((shard, bound))) => {
                if shard == 0 {
                    addr = Some(bound);
                }
            }
            Ok(Err(e)) => bail!("shard failed to start: {e}"),
            Err(_) => bail!("shards did not start within {STARTUP_TIMEOUT_S} s"),
        }
    }
    addr.context("shard 0 did not report its address")
}

fn wait_for_signal(
    mut signals: signal_hook::iterator::Signals,
    shutdown: flume::Sender<()>,
    cores: usize,
) {
    if let Some(signal) = signals.forever().next() {
        info!(signal, "shutting down");
    }
    for _ in 0..cores {
        let _ = shutdown.send(());
    }
}

async fn run_shard(start: ShardStart) -> anyhow::Result<()> {
    // First, so recovery's IO is covered too (see rmq_storage::reactor_tick).
    rmq_storage::reactor_tick::spawn_reactor_tick();
    let index = start.next_shard_id.fetch_add(1, Ordering::SeqCst);
    assert!(index < start.config.cores, "more executors than shards");
    let id = ShardId(u16::try_from(index).context("shard id")?);
    let senders = start.mesh.senders[index].clone();
    let receivers = start.mesh.receivers[index].clone();
    rmq_storage::probe_direct_io(&start.config.data_dir)
        .await
        .with_context(|| {
            format!(
                "direct IO probe failed in {}",
                start.config.data_dir.display()
            )
        })?;
    let controller = (id.0 == 0)
        .then(|| Controller::new((*start.metadata).clone(), start.config.num_partitions));
    let shard = Rc::new(Shard::new(
        id,
        start.config.clone(),
        Arc::new(ClusterMetadata::default()),
        senders,
        controller,
        start.metrics[index].clone(),
        start.cluster_view.clone(),
    ));
    shard.apply_metadata(start.metadata.clone()).await;
    spawn_mesh_receivers(&shard, receivers);
    spawn_retention(&shard);
    spawn_log_cleaner(&shard);
    spawn_group_ticks(&shard);
    spawn_metrics_refresh(&shard);
    let listener = bind_listener(&shard, shard.config.kafka_addr, &start.bound)?;
    let mqtt_listener = bind_listener(&shard, shard.config.mqtt_addr, &start.mqtt_bound)?;
    let mqtt_ws_listener = bind_listener(&shard, shard.config.mqtt_ws_addr, &start.mqtt_ws_bound)?;
    // After the bind: the other shards wait for shard 0's port before they serve the mesh
    // broadcast that creating the topic waits for.
    if id.0 == 0 {
        ensure_offsets_topic(&shard).await?;
        mqtt::state::ensure_topic(&shard).await?;
        mqtt::bridge::ensure_topics(&shard).await?;
    }
    // Before the ready line: a client that connects after it finds its session and retained
    // messages.
    mqtt::state::restore(&shard).await?;
    // Before the ready line: a record produced after it is routed to MQTT subscribers.
    mqtt::bridge::start_tailers(&shard).await?;
    let bound = listener
        .local_addr()
        .map_err(|e| anyhow::anyhow!("listener address: {e}"))?;
    shard.set_node(advertised(&start.config, bound));
    // Shard 0 of a cluster node joins the controller group (it registers the address above).
    let cluster = match (&start.cluster_view, &shard.controller) {
        (Some(view), Some(controller)) => {
            let started = ClusterNode::start(&shard, view.clone()).await;
            let (lock, ready) = &*start.rpc_bound;
            *lock
                .lock()
                .map_err(|_| anyhow::anyhow!("bind slot poisoned"))? = Some(
                started
                    .as_ref()
                    .map(|(_, addr)| *addr)
                    .map_err(|e| format!("{e:#}")),
            );
            ready.notify_all();
            let (node, _) = started?;
            controller.set_cluster(node.clone());
            Some(node)
        }
        // The other shards of a cluster node host the replicated partitions placed on them,
        // each with its own RPC client; the RPC server on shard 0 hands them their requests.
        (Some(view), None) => {
            let replicas = Rc::new(ReplicaManager::new(
                start.config.node_id,
                RpcClient::new(
                    u64::try_from(start.config.node_id).unwrap_or(0),
                    view.link_filter.clone(),
                ),
                Rc::new(RaftGroups::default()),
                view.clone(),
                view.election_timeout_ms,
            )?);
            *shard.replicas.borrow_mut() = Some(replicas.clone());
            replicas.start_new(&shard, &shard.metadata()).await;
            glommio::spawn_local(replicas.clone().balance_leaders()).detach();
            glommio::spawn_local(replicas.gossip_leaders(shard.clone())).detach();
            None
        }
        _ => None,
    };
    let _ = start.ready.send(Ok((id.0, bound)));
    let accept = glommio::spawn_local(kafka_listener::accept_loop(shard.clone(), listener));
    let mqtt_accept =
        glommio::spawn_local(mqtt::listener::accept_loop(shard.clone(), mqtt_listener));
    let mqtt_ws_accept = glommio::spawn_local(mqtt::websocket::accept_loop(
        shard.clone(),
        mqtt_ws_listener,
    ));
    let _ = start.shutdown.recv_async().await;
    shard.begin_shutdown();
    drop(accept);
    drop(mqtt_accept);
    drop(mqtt_ws_accept);
    mqtt::state::write_at_shutdown(&shard, &start.mqtt_state_written, start.config.cores).await;
    drain(&shard).await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    let replicas = shard.replicas.borrow_mut().take();
    if let Some(replicas) = replicas {
        replicas.shutdown().await;
    }
    shard.logs.close_all().await.context("closing logs")?;
    info!(shard = id.0, "shard stopped");
    Ok(())
}

/// Shard 0 binds the configured address (port 0 picks one); the others bind the port it got.
fn bind_listener(
    shard: &Shard,
    addr: SocketAddr,
    slot: &BoundSlot,
) -> anyhow::Result<glommio::net::TcpListener> {
    let (lock, ready) = &**slot;
    if shard.id.0 == 0 {
        let result = kafka_listener::ensure_port_free(addr)
            .and_then(|()| kafka_listener::bind(addr))
            .with_context(|| format!("cannot listen on {addr}"));
        let shared = match &result {
            Ok(listener) => listener.local_addr().map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        *lock
            .lock()
            .map_err(|_| anyhow::anyhow!("bind slot poisoned"))? = Some(shared);
        ready.notify_all();
        return result;
    }
    let guard = lock
        .lock()
        .map_err(|_| anyhow::anyhow!("bind slot poisoned"))?;
    let (guard, _) = ready
        .wait_timeout_while(guard, Duration::from_secs(STARTUP_TIMEOUT_S), |slot| {
            slot.is_none()
        })
        .map_err(|_| anyhow::anyhow!("bind slot poisoned"))?;
    let addr = match guard.as_ref() {
        Some(Ok(addr)) => *addr,
        Some(Err(e)) => bail!("shard 0 could not listen: {e}"),
        None => bail!("shard 0 did not bind in time"),
    };
    drop(guard);
    kafka_listener::bind(addr).with_context(|| format!("cannot listen on {addr}"))
}

/// The address shard 0 bound for a listener (after every shard reported ready).
fn bound_address(slot: &BoundSlot) -> anyhow::Result<SocketAddr> {
    let guard = slot
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("bind slot poisoned"))?;
    match guard.as_ref() {
        Some(Ok(addr)) => Ok(*addr),
        Some(Err(e)) => bail!("shard 0 could not listen: {e}"),
        None => bail!("shard 0 did not bind"),
    }
}

fn advertised(config: &NodeConfig, bound: SocketAddr) -> NodeInfo {
    let (host, port) = match &config.advertised_kafka_addr {
        Some((host, port)) => (host.clone(), if *port == 0 { bound.port() } else { *port }),
        None if bound.ip().is_unspecified() => ("127.0.0.1".to_string(), bound.port()),
        None => (bound.ip().to_string(), bound.port()),
    };
    NodeInfo {
        node_id: config.node_id,
        host,
        port: i32::from(port),
    }
}

/// Creates `__consumer_offsets` on the first start as a compacted topic, as Kafka does
/// (`cleanup.policy=compact`: the latest commit per group and partition is kept, deleted
/// offsets go once `delete.retention.ms` has passed; `retention.ms=-1` besides, so nothing
/// ages out even if the policy is changed to include delete). A topic created before
/// compaction existed is switched to `cleanup.policy=compact`.
async fn ensure_offsets_topic(shard: &Rc<Shard>) -> anyhow::Result<()> {
    if let Some(topic) = shard.metadata().topics.get(OFFSETS_TOPIC) {
        if topic.configs.get("cleanup.policy").map(String::as_str) == Some("compact") {
            return Ok(());
        }
        return make_offsets_topic_compacted(shard).await;
    }
    let spec = TopicSpec {
        name: OFFSETS_TOPIC.to_string(),
        partition_count: shard.config.offsets_topic_num_partitions,
        replication_factor: -1,
        configs: vec![
            ("cleanup.policy".to_string(), Some("compact".to_string())),
            ("retention.ms".to_string(), Some("-1".to_string())),
            (
                "segment.bytes".to_string(),
                Some(OFFSETS_TOPIC_SEGMENT_BYTES.to_string()),
            ),
        ],
    };
    create_topic_at_startup(shard, spec).await.map(|_| ())
}

/// Shard 0 at startup: creates the topic `spec` describes through the controller. Returns
/// whether it was created (false: it existed already).
pub(crate) async fn create_topic_at_startup(
    shard: &Rc<Shard>,
    spec: TopicSpec,
) -> anyhow::Result<bool> {
    let controller = shard
        .controller
        .as_ref()
        .context("the controller runs on shard 0")?;
    let name = spec.name.clone();
    let request = ControllerRequest::CreateTopics {
        specs: vec![spec],
        validate_only: false,
    };
    match controller.handle(shard, request).await {
        ControllerReply::CreateTopics(results) => match results.into_iter().next() {
            Some(Ok(_)) => Ok(true),
            Some(Err(KernelError::TopicAlreadyExists)) => Ok(false),
            Some(Err(e)) => bail!("cannot create {name}: {e}"),
            None => bail!("cannot create {name}: no answer"),
        },
        _ => bail!("cannot create {name}: unexpected controller answer"),
    }
}

/// Sets `cleanup.policy=compact` on an existing `__consumer_offsets` (other configs kept).
async fn make_offsets_topic_compacted(shard: &Rc<Shard>) -> anyhow::Result<()> {
    let controller = shard
        .controller
        .as_ref()
        .context("the controller runs on shard 0")?;
    let request = ControllerRequest::AlterTopicConfigs {
        name: OFFSETS_TOPIC.to_string(),
        changes: vec![ConfigChange::Set {
            name: "cleanup.policy".to_string(),
            value: "compact".to_string(),
        }],
        replace_all: false,
        validate_only: false,
    };
    match controller.handle(shard, request).await {
        ControllerReply::AlterTopicConfigs(Ok(())) => {
            info!("{OFFSETS_TOPIC} is now a compacted topic");
            Ok(())
        }
        ControllerReply::AlterTopicConfigs(Err(e)) => {
            bail!("cannot make {OFFSETS_TOPIC} compacted: {e}")
        }
        _ => bail!("cannot make {OFFSETS_TOPIC} compacted: unexpected controller answer"),
    }
}

/// Refreshes this shard's gauges for `/metrics`.
fn spawn_metrics_refresh(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(METRICS_REFRESH_INTERVAL_MS)).await;
            let metrics = &shard.metrics;
            let stats = shard.logs.stats();
            ShardMetrics::set(&metrics.partitions, shard.logs.partition_count() as u64);
            ShardMetrics::set(&metrics.groups, shard.groups.group_count() as u64);
            ShardMetrics::set(&metrics.connections, shard.connections.get() as u64);
            ShardMetrics::set(&metrics.appended_bytes, stats.appended_bytes);
            ShardMetrics::set(&metrics.appended_batches, stats.appended_batches);
            ShardMetrics::set(&metrics.fsyncs, stats.fsyncs);
            let engine = mqtt::engine(&shard);
            let mqtt = engine.stats.snapshot();
            let counters = &engine.stats;
            ShardMetrics::set(&metrics.mqtt_connections, mqtt.connections);
            ShardMetrics::set(&metrics.mqtt_sessions, engine.session_count() as u64);
            ShardMetrics::set(&metrics.mqtt_messages_received, mqtt.messages_received);
            ShardMetrics::set(&metrics.mqtt_messages_sent, mqtt.messages_sent);
            ShardMetrics::set(&metrics.mqtt_bytes_received, mqtt.bytes_received);
            ShardMetrics::set(&metrics.mqtt_bytes_sent, mqtt.bytes_sent);
            ShardMetrics::set(
                &metrics.mqtt_bridged_to_kafka,
                counters.bridged_to_kafka.get(),
            );
            ShardMetrics::set(
                &metrics.mqtt_bridged_from_kafka,
                counters.bridged_from_kafka.get(),
            );
            ShardMetrics::set(
                &metrics.mqtt_bridge_append_failures,
                counters.bridge_append_failures.get(),
            );
            ShardMetrics::set(
                &metrics.mqtt_state_records_written,
                counters.state_records_written.get(),
            );
        }
    })
    .detach();
}

/// Expires group sessions and completes due rebalances on this shard's groups.
fn spawn_group_ticks(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(GROUP_TICK_INTERVAL_MS)).await;
            shard.groups.tick(monotonic_ms());
        }
    })
    .detach();
}

fn spawn_retention(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(RETENTION_CHECK_INTERVAL_MS)).await;
            if let Err(e) = shard.logs.enforce_retention_all(now_ms()).await {
                warn!(shard = shard.id.0, error = %e, "retention failed");
            }
        }
    })
    .detach();
}

/// Compacts this shard's `cleanup.policy=compact` partitions every `log_cleaner_interval_ms`,
/// in a task queue of its own with a tenth of the default shares: when requests and the
/// cleaner both have work, requests get ~90% of the core, and the cleaner yields between
/// batches (`LogManager::compact_all` runs one partition at a time, one key map per shard).
fn spawn_log_cleaner(shard: &Rc<Shard>) {
    let interval = Duration::from_millis(shard.config.log_cleaner_interval_ms);
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(LOG_CLEANER_TASK_QUEUE_SHARES),
        glommio::Latency::NotImportant,
        "log-cleaner",
    );
    let id = shard.id.0;
    let shard = shard.clone();
    let cleaner = async move {
        loop {
            glommio::timer::sleep(interval).await;
            shard.logs.compact_all(now_ms()).await;
        }
    };
    match glommio::spawn_local_into(cleaner, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => error!(shard = id, error = %e, "cannot start the log cleaner"),
    }
}

/// Waits until in-flight requests are answered, up to the drain timeout.
async fn drain(shard: &Shard) {
    let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_TIMEOUT_MS);
    while shard.budget.in_flight() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    if shard.budget.in_flight() > 0 {
        warn!(
            shard = shard.id.0,
            in_flight = shard.budget.in_flight(),
            "requests still in flight at shutdown"
        );
    }
}
