//! A ticking timer for every glommio executor that does IO through this crate.
//!
//! glommio parks in `io_uring_enter` with no timeout when no timer is armed. On this machine's
//! kernel (Linux 6.18) a parked executor was seen to stay asleep with IO requests outstanding,
//! no completion posted and the io-wq worker idle, until something interrupted the wait (a
//! ptrace attach unstuck it at once and the test then passed): the storage op-fuzzers hung in
//! about one run in 25 (each run some millions of IOs on tmpfs and ext4), and so did CI's
//! `cargo test`. An armed timer bounds such a stall: its expiry ends the wait and the pending
//! completions are reaped on the way out of the kernel. Cost: one wake-up per tick when idle.
//!
//! Concurrency contract: call once per executor, from that executor's thread.

use std::time::Duration;

/// Longest an executor sleeps without re-entering the kernel for completions. A lost wake-up
/// costs at most this much latency instead of a hang.
pub const REACTOR_TICK_INTERVAL_MS: u64 = 10;

/// Spawns the tick on the current executor; it runs until the executor ends.
pub fn spawn_reactor_tick() {
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(Duration::from_millis(REACTOR_TICK_INTERVAL_MS)).await;
        }
    })
    .detach();
}
