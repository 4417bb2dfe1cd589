//! The MQTT listener of one shard: every shard binds the same address with SO_REUSEPORT
//! (glommio sets it) and serves the connections the kernel hands it, each in its own task.
//! When shutdown begins, every MQTT connection of the shard is closed (v5: DISCONNECT 0x8B).
//! Shard 0 also publishes the node's `$SYS/broker/...` topics.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use rmq_protocols::mqtt::constants::MAX_CONNECTIONS_PER_SHARD;
use rmq_protocols::mqtt::serve_connection;
use tracing::{debug, warn};

use crate::shard::Shard;

/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;

thread_local! {
    /// Open MQTT connections of this shard (one shard per thread), TCP and WebSocket
    /// together, held to `MAX_CONNECTIONS_PER_SHARD`.
    static OPEN_CONNECTIONS: Rc<Cell<usize>> = Rc::new(Cell::new(0));
}

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(std::io::Error::from)
}

/// Accepts connections until the task is dropped (shutdown).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let engine = super::engine(&shard);
    let closer = engine.clone();
    let stopped = shard.stopped();
    glommio::spawn_local(async move {
        stopped.await;
        closer.close_all();
    })
    .detach();
    if shard.id.0 == 0 {
        engine.spawn_sys_publisher(env!("CARGO_PKG_VERSION").to_string());
    }
    accept_within_limit(&shard, listener, "mqtt", move |stream, peer| {
        serve_connection(engine.clone(), stream, peer)
    })
    .await;
}

/// Accepts on `listener` until the task is dropped and serves each connection with `serve` in
/// its own task, while the shard has fewer than `MAX_CONNECTIONS_PER_SHARD` open (TCP and
/// WebSocket counted together); past it a new connection is closed at once and logged.
pub(super) async fn accept_within_limit<F, Fut>(
    shard: &Shard,
    listener: TcpListener,
    kind: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let open = OPEN_CONNECTIONS.with(Rc::clone);
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(shard = shard.id.0, error = %e, kind, "accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        if open.get() >= MAX_CONNECTIONS_PER_SHARD {
            warn!(
                shard = shard.id.0,
                limit = MAX_CONNECTIONS_PER_SHARD,
                kind,
                "mqtt connection limit reached; closing new connection"
            );
            drop(stream);
            continue;
        }
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        open.set(open.get() + 1);
        let open = open.clone();
        let serving = serve(stream, peer);
        glommio::spawn_local(async move {
            serving.await;
            open.set(open.get().saturating_sub(1));
        })
        .detach();
    }
}
