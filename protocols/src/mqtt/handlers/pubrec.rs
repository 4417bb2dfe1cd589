//! PUBREC: the client has a QoS 2 message we sent; we answer PUBREL.

use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(connection: &Connection<K>, pkid: u16, reason: u8) -> Result<(), End> {
    let now = connection.engine.kernel.now_ms();
    connection.engine.with_session(
        &connection.client_id,
        connection.generation,
        |session, link| session.on_pubrec(pkid, reason, link, now),
    );
    Ok(())
}
