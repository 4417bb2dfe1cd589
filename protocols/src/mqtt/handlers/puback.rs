//! PUBACK: a QoS 1 message we sent is acknowledged; the window moves on.

use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(connection: &Connection<K>, pkid: u16) -> Result<(), End> {
    let now = connection.engine.kernel.now_ms();
    connection.engine.with_session(
        &connection.client_id,
        connection.generation,
        |session, link| session.on_puback(pkid, link, now),
    );
    Ok(())
}
