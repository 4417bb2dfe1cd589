//! The Kafka listener of one shard: every shard binds the same address with SO_REUSEPORT
//! (glommio sets it) and serves the connections the kernel hands it, each in its own task.
//! Shard 0 first checks that no other process holds the port (`ensure_port_free`).

use std::net::SocketAddr;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use rmq_protocols::kafka::{serve_connection, ConnectionStats};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use crate::constants::MAX_CONNECTIONS_PER_SHARD;
use crate::kernel::ShardKernel;
use crate::shard::Shard;

/// Pause after a failed accept (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 10;

/// Pending connections a listener queues before accept: 1,024 (what glommio uses).
const LISTEN_BACKLOG: i32 = 1024;

/// Binds one shard's listener: SO_REUSEPORT so every shard binds the port, and SO_REUSEADDR
/// (glommio's own `bind` sets only the first) so that a restarted node can bind while the
/// connections its previous process left behind (TIME_WAIT, FIN_WAIT after a kill -9) still
/// hold the port; accepted sockets inherit both.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // SAFETY: `into_raw_fd` hands over a bound, listening socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Fails with "address in use" when another socket listens on `addr`, even one bound with
/// SO_REUSEPORT (another rmq-node would otherwise share the port and take half of its
/// connections); leftover connections of a previous process do not count (SO_REUSEADDR on
/// both sides). Shard 0 calls it before the shards bind their SO_REUSEPORT listeners; port 0
/// needs no check.
pub fn ensure_port_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    Ok(())
}

/// Accepts connections until the task is dropped (shutdown).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let kernel = ShardKernel::new(shard.clone());
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(shard = shard.id.0, error = %e, "kafka accept failed");
                glommio::timer::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                continue;
            }
        };
        if shard.connections.get() >= MAX_CONNECTIONS_PER_SHARD {
            warn!(
                shard = shard.id.0,
                limit = MAX_CONNECTIONS_PER_SHARD,
                "connection limit reached; closing new connection"
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
        shard.connections.set(shard.connections.get() + 1);
        let shard = shard.clone();
        let kernel = kernel.clone();
        glommio::spawn_local(async move {
            let mut stream = stream;
            let stats = ConnectionStats::default();
            serve_connection(&kernel, &mut stream, peer, &stats).await;
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}
