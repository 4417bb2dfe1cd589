//! PUBREL: the client releases an inbound QoS 2 message (already delivered at PUBLISH time);
//! we forget its packet id and answer PUBCOMP (v5: 0x92 if the id was unknown).

use crate::mqtt::codec::{self, reason};
use crate::mqtt::connection::{Connection, End};
use crate::mqtt::kernel::MqttKernel;

pub fn handle<K: MqttKernel>(connection: &Connection<K>, pkid: u16) -> Result<(), End> {
    let released = connection
        .engine
        .with_session(
            &connection.client_id,
            connection.generation,
            |session, _| session.inbound_qos2_released(pkid),
        )
        .unwrap_or(false);
    let code = if released {
        reason::SUCCESS
    } else {
        reason::PACKET_IDENTIFIER_NOT_FOUND
    };
    let level = connection.level;
    connection
        .link
        .write(|out| codec::encode_ack(out, level, codec::PUBCOMP, pkid, code));
    Ok(())
}
